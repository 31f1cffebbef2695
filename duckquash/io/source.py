"""Resolve what the user passed as a source into one SQL ``FROM`` item plus its column types."""
from __future__ import annotations

import glob
import os
import re
import sys
import weakref
from dataclasses import dataclass, field
from typing import Callable

import duckdb

from ..errors import InputError, SourceNotFoundError
from ..sql.names import temp_name
from ..sql.quote import ident, literal, name_parts, qualified

_PARQUET = (".parquet", ".pq", ".parquet.gz")
_CSV = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".csv.zst", ".txt")

NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "BOOLEAN")


@dataclass
class Source:
    """A resolved source: ``sql`` can stand after ``FROM``; ``columns`` maps name to DuckDB type."""

    sql: str
    columns: dict[str, str]
    label: str
    _cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        while self._cleanup:
            self._cleanup.pop()()

    def check_columns(self, names: tuple[str, ...], quantitative: tuple[str, ...]) -> None:
        """Unknown columns and non-numeric quantitative columns are errors naming them."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise InputError(f"unknown column(s) {missing} in {self.label}; it has {list(self.columns)}")
        bad = {n: self.columns[n] for n in quantitative if not is_numeric(self.columns[n])}
        if bad:
            raise InputError(f"quantitative column(s) must be numeric; got {bad} in {self.label}")


def is_numeric(type_name: str) -> bool:
    return type_name.upper().split("(")[0].strip() in NUMERIC_TYPES


def _describe(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {sql}").fetchall()
    return {r[0]: r[1] for r in rows}


def _file_sql(path: str) -> str | None:
    low = path.lower()
    if low.endswith(_PARQUET):
        return f"read_parquet({literal(path)})"
    if low.endswith(_CSV):
        return f"read_csv({literal(path)})"
    return None


def table_exists(con: duckdb.DuckDBPyConnection, parts: list[str] | tuple[str, ...], current: bool = False) -> bool:
    """Whether ``[[catalog.]schema.]name`` names a table or view; ``current``: an unqualified name
    counts only in the current database and schema (where ``CREATE TABLE name`` would put it)."""
    conds = [f"table_name = {literal(parts[-1])}"]
    if len(parts) == 2:  # a.t: table t of schema a, or of database a's default schema (as DuckDB reads it)
        conds.append(f"(table_schema = {literal(parts[0])} OR (table_catalog = {literal(parts[0])} "
                     "AND table_schema = 'main'))")
    if len(parts) >= 3:
        conds.append(f"table_schema = {literal(parts[-2])}")
        conds.append(f"table_catalog = {literal(parts[-3])}")
    if current and len(parts) < 3:
        conds.append("table_catalog = current_database()")
    if current and len(parts) == 1:
        conds.append("table_schema = current_schema()")
    q = f"SELECT count(*) FROM information_schema.tables WHERE {' AND '.join(conds)}"
    return con.execute(q).fetchall()[0][0] > 0


def _relation(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation) -> Source:
    """A relation as a temporary view; refused when it belongs to another connection (whose views
    ``con`` cannot see), leaving nothing behind there."""
    view = temp_name("src")
    rel.create_view(view, replace=False)
    if not table_exists(con, [view]):
        rel.query(temp_name("drop"), f"DROP VIEW IF EXISTS {ident(view)}")
        raise InputError("the relation belongs to another DuckDB connection; pass a relation made on this "
                         "connection (or a table name, file or query)")
    src = Source(ident(view), {}, "relation")
    src._cleanup.append(lambda: con.execute(f"DROP VIEW IF EXISTS {ident(view)}"))
    try:
        src.columns = _describe(con, src.sql)
    except Exception:
        src.close()
        raise
    return src


# Python data objects. Each is registered under a fresh name (a connection-local view DuckDB scans
# in place, as often as a squash needs), except the one-shot streams, which are read once into a
# TEMP table. Nothing is looked up by the name of a Python variable (no replacement scans).
_CONSUMED: "weakref.WeakSet" = weakref.WeakSet()  # RecordBatchReaders duckquash has read to the end


def _kind(obj: object) -> str | None:
    """``"pandas DataFrame"``, ``"pyarrow Table"``, ...: what kind of data object ``obj`` is (by its
    class, without importing a library the caller has not imported), or None."""
    mod = type(obj).__module__.split(".")[0]
    name = type(obj).__name__
    if mod == "pandas" and name == "DataFrame":
        return "pandas DataFrame"
    if mod == "polars" and name in ("DataFrame", "LazyFrame"):
        return f"polars {name}"
    if mod == "pyarrow":
        import pyarrow as pa

        if isinstance(obj, pa.Table):
            return "pyarrow Table"
        if isinstance(obj, pa.RecordBatch):
            return "pyarrow RecordBatch"
        if isinstance(obj, pa.RecordBatchReader):
            return "pyarrow RecordBatchReader"
        try:
            import pyarrow.dataset as pads
        except ImportError:  # pragma: no cover - pyarrow built without datasets
            return None
        if isinstance(obj, pads.Dataset):
            return "pyarrow Dataset"
    return None


def drain_pending(con: duckdb.DuckDBPyConnection, source: object) -> object:
    """``source``, unless it is a RecordBatchReader of a query on ``con`` itself (``con.sql(...).arrow()``):
    that holds ``con``'s open result, so no other query can run until it is read; it is then read
    into memory and the pyarrow Table returned (pass the relation itself to stream it instead).
    Entry points call this before their first query on ``con``."""
    if _kind(source) != "pyarrow RecordBatchReader" or source in _CONSUMED:
        return source
    try:
        con.execute("SELECT 1").fetchall()
    except duckdb.Error as e:
        if "open result" not in str(e):
            raise
        table = source.read_all()
        _CONSUMED.add(source)
        return table
    return source


def _python_object(con: duckdb.DuckDBPyConnection, obj: object, kind: str) -> Source:
    """A pandas/polars/pyarrow object as a source: registered under a fresh name (unregistered by
    ``close``); a RecordBatchReader, which can be read only once, is read once into a TEMP table
    (dropped by ``close``) since a squash reads its source several times. Errors name the kind of
    object, never its data."""
    import pyarrow as pa

    data = obj
    if kind == "polars LazyFrame":
        data = obj.collect().to_arrow()  # polars evaluates the plan; DuckDB then scans the Arrow table
    elif kind == "polars DataFrame":
        data = obj.to_arrow()
    elif kind == "pyarrow RecordBatch":
        data = pa.Table.from_batches([obj])
    name = temp_name("obj")
    if kind == "pyarrow RecordBatchReader":
        if obj in _CONSUMED:
            raise InputError("this pyarrow RecordBatchReader was already read to the end by an earlier call (a "
                             "reader can be read only once); pass a pyarrow Table (reader.read_all()) or a new reader")
        data = drain_pending(con, obj)
        if isinstance(data, pa.RecordBatchReader):
            stream, name = name, temp_name("once")
            con.register(stream, obj)
            try:
                con.execute(f"CREATE TEMP TABLE {ident(name)} AS SELECT * FROM {qualified((stream,))}")
            except duckdb.Error as e:
                raise InputError(f"cannot read the pyarrow RecordBatchReader: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]}") from None
            finally:
                con.unregister(stream)
                _CONSUMED.add(obj)
            src = Source(f"temp.{ident(name)}", {}, "pyarrow RecordBatchReader (read once into a TEMP table)")
            src._cleanup.append(lambda: con.execute(f"DROP TABLE IF EXISTS temp.{ident(name)}"))
        else:
            kind = "pyarrow RecordBatchReader (of a query on this connection, read into memory)"
    if not isinstance(data, pa.RecordBatchReader):
        try:
            con.register(name, data)
        except (duckdb.Error, TypeError, ValueError) as e:
            raise InputError(f"cannot read the {kind}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        src = Source(qualified((name,)), {}, kind)
        src._cleanup.append(lambda: con.unregister(name))
    try:
        src.columns = _describe(con, src.sql)
    except duckdb.Error as e:
        src.close()
        raise InputError(f"cannot read the {kind}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    return src


def _python_name_hint(name: str) -> str:
    """When ``name`` is also a Python variable holding a data object (in a caller's frame outside
    duckquash), a hint to pass the object: duckquash does not look variables up by name."""
    if not name.isidentifier():
        return ""
    frame = sys._getframe(1)
    while frame is not None:
        if not str(frame.f_globals.get("__name__", "")).startswith("duckquash"):
            for scope in (frame.f_locals, frame.f_globals):
                if name in scope:
                    kind = _kind(scope[name]) or (
                        "DuckDB relation" if isinstance(scope[name], duckdb.DuckDBPyRelation) else None)
                    if kind:
                        return (f"; {name!r} is a {kind} in your Python code: pass the object itself "
                                f"(e.g. squash(con, {name}, ...)), not its name (duckquash does not look "
                                "Python variables up by name)")
                    return ""
        frame = frame.f_back
    return ""


def _one_select(con: duckdb.DuckDBPyConnection, text: str) -> str | None:
    """The text of ``text`` as one read-only SELECT (comments and a final ``;`` allowed), or None if
    it does not parse; an error naming the problem if it parses as anything else."""
    try:
        statements = con.extract_statements(text)
    except duckdb.ParserException:
        return None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(str(s.type).rsplit(".", 1)[-1] for s in statements) or "nothing"
        raise InputError(f"a query source must be exactly one read-only SELECT statement; this text holds "
                         f"{len(statements)} statement(s) ({kinds}), so none of it was run")
    return statements[0].query.strip().rstrip(";")


def resolve(con: duckdb.DuckDBPyConnection, source: object) -> Source:
    """Turn a source into a :class:`Source`. A source is exactly one of

    * a table or view name (parsed as SQL reads names, see :func:`duckquash.sql.quote.name_parts`;
      TEMP ones too), or a tuple of name parts;
    * a Parquet/CSV path (``str`` or ``os.PathLike``) or glob;
    * exactly one read-only SELECT (checked with DuckDB's own parser; nothing else is ever run);
    * a table-function FROM item such as ``read_parquet('parts/*.parquet')``: accepted only when
      ``SELECT * FROM <text>`` is, by DuckDB's parser, exactly one SELECT statement (and the text
      holds no ``;``), so it can do no more than a SELECT source;
    * a Python data object: a pandas DataFrame, polars DataFrame or LazyFrame (collected first),
      pyarrow Table, RecordBatch, RecordBatchReader or Dataset (registered under a fresh name and
      scanned in place; a RecordBatchReader can be read only once, so it is read once into a TEMP
      table dropped with the source), or a DuckDB relation of this connection;
    * an already resolved :class:`Source` (borrowed: closing the result leaves it open).

    A string is never looked up as a Python variable (DuckDB's replacement scans): ``"df"`` names
    a table or view; a DataFrame ``df`` is passed as ``df``. Errors name the kind of an object,
    never its data."""
    if isinstance(source, Source):
        return Source(source.sql, dict(source.columns), source.label)
    if isinstance(source, duckdb.DuckDBPyRelation):
        return _relation(con, source)
    kind = _kind(source)
    if kind is not None:
        return _python_object(con, source, kind)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, tuple) and 1 <= len(source) <= 3 and all(isinstance(p, str) and p for p in source):
        if not table_exists(con, source):
            raise SourceNotFoundError(f"source table {'.'.join(source)!r} does not exist on this connection")
        return Source(qualified(source), _describe(con, qualified(source)), f"table {'.'.join(source)!r}")
    if not isinstance(source, str) or not source.strip():
        raise InputError("source must be a table name, file path or glob, one SELECT statement, a DuckDB relation, "
                         "or a pandas/polars DataFrame or pyarrow Table/RecordBatchReader/Dataset; got "
                         f"{type(source).__module__.split('.')[0] + '.' if not isinstance(source, str) else ''}"
                         f"{type(source).__name__}" + (" (empty)" if isinstance(source, str) else ""))
    parts = name_parts(source.strip())
    file_sql = _file_sql(source)
    if table_exists(con, parts):
        sql, label = qualified(parts), f"table {source!r}"
    elif file_sql is not None:
        if not glob.has_magic(source) and not os.path.exists(source):
            raise SourceNotFoundError(f"source file {source!r} does not exist")
        if glob.has_magic(source) and not glob.glob(source):
            raise SourceNotFoundError(f"no file matches the source pattern {source!r}")
        sql, label = file_sql, f"file {source!r}"
    elif (query := _one_select(con, source)) is not None:
        sql, label = f"(\n{query}\n)", "query"
    elif "(" in source and ";" not in source and _one_select(con, f"SELECT * FROM {source}\n") is not None:
        sql, label = f"(SELECT * FROM {source}\n)", f"FROM item {source!r}"
    else:
        raise SourceNotFoundError(
            f"source {source!r} is not a table or view on this connection, a .parquet/.csv file, nor one "
            "valid SELECT statement" + _python_name_hint(source.strip()))
    try:
        columns = _describe(con, sql)
    except duckdb.Error as e:
        missing = re.search(r"Table with name (\w+) does not exist", str(e))
        raise InputError(f"cannot read {label}: {e}" + (_python_name_hint(missing.group(1)) if missing else "")) from None
    return Source(sql, columns, label)
