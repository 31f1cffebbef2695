"""SQL text: the single place where identifiers and literals are quoted.

Every name or value that reaches a generated query goes through :func:`ident` or
:func:`literal`; nothing else in duckquash interpolates user text into SQL.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def ident(name: str) -> str:
    """Quote one identifier (column, table, schema) for DuckDB, whatever characters it holds."""
    if not isinstance(name, str) or name == "":
        raise TypeError(f"an SQL identifier must be a non-empty string, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"an SQL identifier cannot contain a NUL character: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def qualified(parts: Sequence[str]) -> str:
    """Quote a dotted name given as its parts, e.g. ``("main", "my table")``."""
    return ".".join(ident(p) for p in parts)


def literal(value: object) -> str:
    """Render a Python value as a DuckDB literal: str, bool, int, float (exact round trip), None, list."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value) if value >= 0 else f"({value})"  # parenthesised: '-' + '-1' would open a comment
    if isinstance(value, float):
        if math.isnan(value):
            return "'NaN'::DOUBLE"
        if math.isinf(value):
            return "'Infinity'::DOUBLE" if value > 0 else "'-Infinity'::DOUBLE"
        return repr(value) + "::DOUBLE" if math.copysign(1.0, value) > 0 else f"({value!r}::DOUBLE)"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("an SQL string literal cannot contain a NUL character")
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as an SQL literal")


def comma(items: Iterable[str]) -> str:
    """Join SQL fragments with commas."""
    return ", ".join(items)
