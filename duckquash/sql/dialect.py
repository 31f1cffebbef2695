"""Render duckquash's DuckDB SQL for another engine, in one place.

Queries are generated in DuckDB's dialect with a placeholder standing for the user's FROM item;
sqlglot transpiles that text (casts, quoting, function names) and the FROM item is put in
afterwards, verbatim, so a user's table or subquery is never rewritten.
"""
from __future__ import annotations

from ..errors import InputError, InternalError

DIALECTS = ("duckdb", "postgres", "spark")
FROM_PLACEHOLDER = "__dq_from_item"


def check_dialect(dialect: str) -> str:
    if dialect not in DIALECTS:
        raise InputError(f"dialect must be one of {list(DIALECTS)}, got {dialect!r}")
    return dialect


def render(sql: str, dialect: str, from_item: str) -> str:
    """``sql`` (DuckDB dialect, reading from :data:`FROM_PLACEHOLDER`) for ``dialect``, reading ``from_item``."""
    check_dialect(dialect)
    if FROM_PLACEHOLDER not in sql:
        raise InternalError("the query does not read the FROM placeholder")
    if dialect != "duckdb":
        import sqlglot  # only needed for other engines

        sql = sqlglot.transpile(sql, read="duckdb", write=dialect)[0]
    return sql.replace(FROM_PLACEHOLDER, from_item)
