"""Resolve what the user passed as a source into one SQL ``FROM`` item plus its column types."""
from __future__ import annotations

import glob
import os
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
    if len(parts) >= 2:
        conds.append(f"table_schema = {literal(parts[-2])}")
    if len(parts) >= 3:
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
    """Turn a source into a :class:`Source`: a table or view name (parsed as SQL reads names, see
    :func:`duckquash.sql.quote.name_parts`), a Parquet/CSV path or glob, exactly one read-only SELECT
    (checked with DuckDB's own parser; nothing else is ever run), a FROM item such as
    ``read_parquet('parts/*.parquet')``, or a relation of this connection."""
    if isinstance(source, duckdb.DuckDBPyRelation):
        return _relation(con, source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, tuple) and 1 <= len(source) <= 3 and all(isinstance(p, str) and p for p in source):
        if not table_exists(con, source):
            raise SourceNotFoundError(f"source table {'.'.join(source)!r} does not exist on this connection")
        return Source(qualified(source), _describe(con, qualified(source)), f"table {'.'.join(source)!r}")
    if not isinstance(source, str) or not source.strip():
        raise InputError("source must be a table name, file path, SELECT statement or relation, "
                         f"got {type(source).__name__}" + (" (empty)" if isinstance(source, str) else ""))
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
            "valid SELECT statement")
    try:
        columns = _describe(con, sql)
    except duckdb.Error as e:
        raise InputError(f"cannot read {label}: {e}") from None
    return Source(sql, columns, label)
