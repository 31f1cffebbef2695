"""Resolve what the user passed as a source into one SQL ``FROM`` item plus its column types."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Callable

import duckdb

from ..errors import InputError, SourceNotFoundError
from ..sql.names import temp_name
from ..sql.quote import ident, literal

_QUERY = re.compile(r"^\s*(\(|select\b|with\b|from\b|values\b|table\b|pivot\b|unpivot\b)", re.IGNORECASE)
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


def resolve(con: duckdb.DuckDBPyConnection, source: object) -> Source:
    """Turn a table/view name, file path or glob, SELECT text or relation into a :class:`Source`."""
    if isinstance(source, duckdb.DuckDBPyRelation):
        view = temp_name("src")
        source.create_view(view, replace=False)
        src = Source(ident(view), {}, "relation")
        src._cleanup.append(lambda: con.execute(f"DROP VIEW IF EXISTS {ident(view)}"))
        try:
            src.columns = _describe(con, src.sql)
        except Exception:
            src.close()
            raise
        return src
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise InputError(f"source must be a table name, file path, SELECT statement or relation, got {source!r}")
    if _QUERY.match(source):
        sql = f"({source.strip().rstrip(';')})"
        label = "query"
    else:
        file_sql = _file_sql(source)
        if file_sql is not None:
            if not glob.has_magic(source) and not os.path.exists(source):
                raise SourceNotFoundError(f"source file {source!r} does not exist")
            if glob.has_magic(source) and not glob.glob(source):
                raise SourceNotFoundError(f"no file matches the source pattern {source!r}")
            sql, label = file_sql, f"file {source!r}"
        elif table_exists(con, [source]):
            sql, label = ident(source), f"table {source!r}"
        elif "." in source and table_exists(con, source.split(".")):
            sql, label = ".".join(ident(p) for p in source.split(".")), f"table {source!r}"
        else:
            raise SourceNotFoundError(
                f"source {source!r} is not a table or view on this connection, nor a .parquet/.csv file")
    try:
        columns = _describe(con, sql)
    except duckdb.Error as e:
        raise InputError(f"cannot read {label}: {e}") from None
    return Source(sql, columns, label)
