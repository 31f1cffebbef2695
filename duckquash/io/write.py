"""Write back: put an Arrow table into the database or a file, whole or not at all."""
from __future__ import annotations

import glob
import os
import tempfile
import time
from typing import Sequence

import duckdb
import pyarrow as pa

from ..errors import InputError, OutputExistsError
from .source import table_exists
from ..sql.names import PREFIX, temp_name
from ..sql.quote import literal, name_parts, qualified

FILE_FORMATS = {".parquet": "PARQUET", ".pq": "PARQUET", ".csv": "CSV"}


def table_name(into: str | Sequence[str]) -> tuple[str, ...]:
    """An output name as its parts: a str is read as SQL reads a name (``s.t`` is table t of schema s,
    ``"s.t"`` one name with a dot; see :func:`duckquash.sql.quote.name_parts`); a tuple gives the parts."""
    if isinstance(into, str):
        parts = name_parts(into.strip()) if into.strip() else ()
    elif isinstance(into, (tuple, list)):
        parts = tuple(into)
    else:
        raise InputError(f"into must be a table name (str) or a tuple of name parts, got {into!r} "
                         f"({type(into).__name__})" if isinstance(into, (int, float, bool)) or into is None else
                         f"into must be a table name (str) or a tuple of name parts, got {type(into).__name__}")
    if not parts or not all(isinstance(p, str) and p for p in parts) or len(parts) > 3:
        raise InputError(f"output table must be a name or (schema, name) tuple, got {into!r}")
    reserved = [p for p in parts if p.startswith(PREFIX)]
    if reserved:
        raise InputError(f"output name {'.'.join(parts)!r} uses the prefix {PREFIX!r}, reserved for duckquash")
    return parts


def _identity(con: duckdb.DuckDBPyConnection, parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    schema = parts[-2] if len(parts) >= 2 else None
    catalog = parts[-3] if len(parts) >= 3 else None
    two = parts[0] if len(parts) == 2 else None  # a.t: schema a, or database a's default schema
    rows = con.execute(
        "SELECT table_catalog, table_schema, table_name FROM information_schema.tables WHERE table_name = ? "
        "AND (? IS NULL OR table_schema = ? OR (table_catalog = ? AND table_schema = 'main')) "
        "AND (? IS NULL OR table_catalog = ?) "
        "ORDER BY (table_catalog = current_database()) DESC, (table_schema = current_schema()) DESC LIMIT 1",
        [parts[-1], schema, schema, two, catalog, catalog]).fetchall()
    return tuple(rows[0]) if rows else None


def refuse_replacing_source(con: duckdb.DuckDBPyConnection, source: object, parts: tuple[str, ...]) -> None:
    """Refuse ``replace=True`` onto the very table being read (the input would become its own squash)."""
    if not isinstance(source, str):
        return
    source_parts = name_parts(source.strip())
    target = _identity(con, parts)
    if target is not None and target == _identity(con, source_parts):
        raise InputError(f"the output {'.'.join(parts)!r} is the input table itself; write the result elsewhere "
                         "(replace=True would overwrite the rows being squashed)")


def check_table_target(con: duckdb.DuckDBPyConnection, parts: tuple[str, ...], replace: bool) -> None:
    """Refuse an output whose schema does not exist, or that exists when ``replace`` is False."""
    if len(parts) >= 2:  # a.t: schema a (or database a, as DuckDB reads it); c.s.t: schema s of database c
        if len(parts) == 3:
            sql, args = "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = ? AND database_name = ?", parts[1::-1]
        else:
            sql = ("SELECT (SELECT count(*) FROM duckdb_schemas() WHERE schema_name = ?) + "
                   "(SELECT count(*) FROM duckdb_databases() WHERE database_name = ?)")
            args = [parts[0], parts[0]]
        if not con.execute(sql, list(args)).fetchall()[0][0]:
            raise InputError(f"output {'.'.join(parts)!r}: there is no schema {'.'.join(parts[:-1])!r}; create it "
                             "first, or quote a name that holds a dot (\"s.t\")")
    if not replace and table_exists(con, parts, current=True):
        raise OutputExistsError(f"output table {'.'.join(parts)!r} already exists; pass replace=True to overwrite it")


def is_temp(parts: tuple[str, ...]) -> bool:
    """``temp.t`` / ``temp.main.t``: a TEMP table (gone when the connection closes)."""
    return len(parts) >= 2 and parts[0].lower() == "temp" and (len(parts) == 2 or parts[1].lower() == "main")


def write_table(con: duckdb.DuckDBPyConnection, data: pa.Table, parts: tuple[str, ...], replace: bool) -> None:
    """One ``CREATE [OR REPLACE] [TEMP] TABLE ... AS`` statement: DuckDB makes it atomic. ``parts``
    ``("temp", name)`` makes a TEMP table, private to ``con`` and dropped when it closes."""
    check_table_target(con, parts, replace)
    view = temp_name("out")
    con.register(view, data)
    try:
        verb = ("CREATE OR REPLACE" if replace else "CREATE") + (" TEMP TABLE" if is_temp(parts) else " TABLE")
        target = qualified((parts[-1],)) if is_temp(parts) else qualified(parts)
        con.execute(f"{verb} {target} AS SELECT * FROM {qualified((view,))}")
    except duckdb.CatalogException as e:
        if "already exists" in str(e):
            raise OutputExistsError(f"output table {'.'.join(parts)!r} already exists") from None
        raise
    finally:
        con.unregister(view)


def file_format(path: str) -> str | None:
    return FILE_FORMATS.get(os.path.splitext(path)[1].lower())


def output_from_sql(parts: tuple[str, ...], path: str | None = None) -> str:
    """An output as a SQL FROM item: the table ``parts``, or ``read_parquet``/``read_csv`` of the
    file ``path`` it was written to."""
    if path is not None:
        reader = "read_csv" if file_format(path) == "CSV" else "read_parquet"
        return f"{reader}({literal(path)})"
    return qualified(parts)


def file_target(into: object) -> str | None:
    """The path when an ``into=`` names a file: an ``os.PathLike``, or a str ending in ``.parquet``,
    ``.pq`` or ``.csv`` (a table whose name ends so is given quoted, ``'"out.csv"'``, or as a tuple)."""
    if isinstance(into, os.PathLike):
        return os.fspath(into)
    if isinstance(into, str) and not into.strip().startswith('"') and file_format(into.strip()) is not None:
        return into.strip()
    return None


def same_file(source: object, path: str) -> bool:
    """Whether ``source`` (a path) is the file ``path`` (an output must not overwrite its input)."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return isinstance(source, str) and not glob.has_magic(source) and os.path.exists(source) and \
        os.path.abspath(source) == os.path.abspath(path)


def check_file_target(path: str, replace: bool) -> None:
    """Refuse a file output with an unknown extension, in a folder that does not exist, or that exists
    when ``replace`` is False (checked before the work, and again when writing)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"the folder of the output file {path!r} does not exist: {folder!r}")
    if file_format(path) is None:
        raise InputError(f"output file {path!r} must end in one of {sorted(FILE_FORMATS)}")
    if not replace and os.path.exists(path):
        raise OutputExistsError(f"output file {path!r} already exists; pass replace=True to overwrite it")


STALE_SECONDS = 3600  # a temporary output file older than this was left by a killed writer


def _remove_stale(folder: str) -> None:
    """Remove ``.duckquash-*`` temporary files a killed writer left in ``folder`` (older than an hour:
    a fresh one may belong to a writer still running)."""
    now = time.time()
    for p in glob.glob(os.path.join(glob.escape(folder), ".duckquash-*")):
        try:
            if now - os.path.getmtime(p) > STALE_SECONDS:
                os.unlink(p)
        except OSError:
            pass


def write_file(con: duckdb.DuckDBPyConnection, data: pa.Table, path: str, replace: bool) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    check_file_target(path, replace)
    fmt = file_format(path)
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale(folder)
    fd, tmp = tempfile.mkstemp(prefix=".duckquash-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    view = temp_name("out")
    con.register(view, data)
    try:
        opts = "FORMAT PARQUET" if fmt == "PARQUET" else "FORMAT CSV, HEADER"
        con.execute(f"COPY (SELECT * FROM {qualified((view,))}) TO {literal(tmp)} ({opts})")
        if not replace and os.path.exists(path):
            raise OutputExistsError(f"output file {path!r} appeared while squashing; not overwritten")
        os.replace(tmp, path)
    finally:
        con.unregister(view)
        if os.path.exists(tmp):
            os.unlink(tmp)
