"""SQL text: the single place where identifiers and literals are quoted.

Every name or value that reaches a generated query goes through :func:`ident` or
:func:`literal`; nothing else in duckquash interpolates user text into SQL.
"""
from __future__ import annotations

import math
import re
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


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def name_parts(text: str) -> tuple[str, ...]:
    """A table name as SQL reads it, as its parts: ``s.t`` is table t of schema s, ``"s.t"`` (double
    quotes, ``""`` for a quote) one name with a dot, ``c.s.t`` also names the catalog. Text that is
    not such a name (``my table``, ``x-1``) is one name, taken literally."""
    parts, i, n = [], 0, len(text)
    while i <= n:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while j < n:
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            if j >= n:
                return (text,)  # an unterminated quote: not a SQL name
            parts.append("".join(buf))
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                return (text,)
            parts.append(m.group(0))
            i = m.end()
        if i == n:
            break
        if text[i] != "." or i + 1 == n:
            return (text,)
        i += 1
    return tuple(parts) if parts and len(parts) <= 3 else (text,)
