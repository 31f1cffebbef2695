"""The model LDS squashes for, its cells (categorical levels, and the response for binomial) and the
cells pass that counts them and checks the response."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb

from ..errors import InputError
from ..io.source import Source, is_numeric
from ..model.formula import Design, build_design
from ..sql.names import PREFIX as _P
from ..sql.quote import comma, ident
from .spec import LdsSpec


@dataclass
class Model:
    src: Source
    design: Design
    where: str
    y: str
    categorical: tuple[str, ...]      # cell keys among the variables (original types kept)
    quantitative: tuple[str, ...]     # variables averaged within a cluster (DOUBLE)
    cell_keys: tuple[str, ...]        # SQL expressions naming a cell (categoricals, y for binomial)
    n_rows: int = 0
    cells: list = field(default_factory=list)  # (cell id, count)


_C_ARG = re.compile(r"\bC\(\s*(?:Q\(\s*['\"]([^'\"]+)['\"]\s*\)|`([^`]+)`|([A-Za-z_][A-Za-z0-9_.]*))")


def categorical_vars(formula: str, variables: tuple[str, ...], columns: dict[str, str]) -> tuple[str, ...]:
    named = {next(g for g in m.groups() if g) for m in _C_ARG.finditer(formula)}
    return tuple(v for v in variables if v in named or not is_numeric(columns[v]))


def build_model(con: duckdb.DuckDBPyConnection, src: Source, spec: LdsSpec) -> Model:
    design = build_design(con, src.sql, spec.formula, levels=spec.levels)
    if design.response is None:
        raise InputError(f"method='lds' needs a response: {spec.formula!r} has no left-hand side")
    if spec.weight in design.variables:
        raise InputError(f"the weight column name {spec.weight!r} is also a model variable; pick another")
    bad = [v for v in design.variables if v.startswith(_P)]
    if bad:
        raise InputError(f"column name(s) {bad} use the prefix {_P!r}, reserved for duckquash")
    where = getattr(design, "where", None) or " AND ".join(f"{ident(v)} IS NOT NULL" for v in design.variables)
    cats = categorical_vars(spec.formula, design.variables, src.columns)
    quant = tuple(v for v in design.variables if v not in cats)
    keys = tuple(ident(c) for c in cats) + ((f"({design.response})",) if spec.family == "binomial" else ())
    return Model(src, design, where, f"({design.response})", cats, quant, keys)


def keyed_sql(m: Model) -> str:
    """Complete rows of the source: the model's variables (bare names), cell keys and y."""
    keys = [f"{k} AS {_P}k{i}" for i, k in enumerate(m.cell_keys)]
    return (f"SELECT {comma([ident(v) for v in m.design.variables] + keys)}, {m.y} AS {_P}y "
            f"FROM {m.src.sql} WHERE {m.where}")


def with_cell_sql(m: Model, keyed: str, cells_table: str) -> str:
    if not m.cell_keys:
        return f"SELECT *, 0 AS {_P}cell FROM ({keyed})"
    cond = " AND ".join(f"{_P}r.{_P}k{i} = {_P}c.{_P}k{i}" for i in range(len(m.cell_keys)))
    return (f"SELECT {_P}r.*, {_P}c.{_P}cell FROM ({keyed}) {_P}r "
            f"JOIN {ident(cells_table)} {_P}c ON {cond}")


def cells_pass(con: duckdb.DuckDBPyConnection, m: Model, spec: LdsSpec, cells_table: str) -> None:
    """Pass 1: rows per cell into ``cells_table`` (cell id by sorted key), response check, N."""
    y = f"{_P}y"
    bad = {"binomial": f"{y} NOT IN (0.0, 1.0)", "poisson": f"{y} < 0.0 OR isnan({y})",
           "gaussian": f"NOT isfinite({y})"}[spec.family]
    knames = [f"{_P}k{i}" for i in range(len(m.cell_keys))]
    group = f"GROUP BY {comma(knames)}" if knames else ""
    order = comma(knames) if knames else "1"
    con.execute(f"""CREATE TEMP TABLE {ident(cells_table)} AS
        SELECT *, (row_number() OVER (ORDER BY {order}) - 1)::INTEGER AS {_P}cell
        FROM (SELECT {comma(knames + ['count(*) AS ' + _P + 'n'])}, count(*) FILTER (WHERE {bad}) AS {_P}bad
              FROM ({keyed_sql(m)}) {group})""")
    rows = con.execute(f"SELECT {_P}cell, {_P}n, {_P}bad FROM {ident(cells_table)} ORDER BY 1").fetchall()
    n = int(sum(r[1] for r in rows))
    if n == 0:
        raise InputError(f"no complete rows for {spec.formula!r} in {m.src.label}")
    nbad = int(sum(r[2] for r in rows))
    if nbad:
        what = {"binomial": "0 or 1", "poisson": "a count >= 0", "gaussian": "finite"}[spec.family]
        raise InputError(f"the response {m.design.response_name!r} must be {what} for family={spec.family!r}; "
                         f"{nbad:,} row(s) are not")
    m.n_rows = n
    m.cells = [(int(r[0]), int(r[1])) for r in rows]
