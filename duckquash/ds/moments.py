"""Momentize: one generated SQL GROUP BY giving, per region, count, min, max and mixed power sums.

Power sums are of the globally standardised values z = (x - center) / scale, up to total
degree ``degree``. Each sum is accumulated as a fixed-point integer (``BIGINT`` terms, exact
``HUGEINT`` total) scaled by a power of two chosen from the global extent so no term can
overflow. Integer addition is associative, so the sums are bit-identical whatever the thread
count or scan order; that makes the squash deterministic and lets partial moment tables
(partitions, appended batches) be added exactly. A monomial whose range is too wide for
1e-9 absolute resolution is summed in DOUBLE instead (and the report says the run is then
only deterministic to rounding).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from ..io.transaction import registered
from ..sql.build import key_match, key_order
from ..sql.names import N_COL, ROWS_COL, max_col, min_col, moment_col, value_col, z_col
from ..sql.quote import comma, ident, literal
from .binning import Binning, Extent, float_matrix

_HEADROOM_BITS = 60  # every scaled term is below 2**60 in magnitude
_MIN_FRACTION_BITS = 30  # fixed point needs at least 2**-30 resolution, else DOUBLE sums
# At most 2**-40 resolution (1e-12 in standardised units, far below any fitting tolerance). Larger
# terms cost speed, not accuracy: DuckDB adds a BIGINT to its HUGEINT sum with a branch that is
# mispredicted whenever the low 64-bit word wraps, which terms near 2**60 make happen every few
# dozen rows. Measured on 5M rows, 125 sums over 12 groups: 5.4 s CPU with terms near 2**60,
# 2.7 s with this cap.
_MAX_FRACTION_BITS = 40


def exponents(q: int, degree: int) -> list[tuple[int, ...]]:
    """All power vectors of total degree 1..degree, lowest order first, pure powers before mixed."""
    out = [e for d in range(1, degree + 1) for e in itertools.product(range(d + 1), repeat=q) if sum(e) == d]
    return sorted(out, key=lambda e: (sum(e), sum(1 for p in e if p), tuple(-p for p in e)))


@dataclass(frozen=True)
class MomentTable:
    """The per-region moment rows (an Arrow table, sorted by region key) and how to read them."""

    table: pa.Table
    categorical: tuple[str, ...]
    key_columns: tuple[str, ...]  # binning keys after the categoricals
    exps: tuple[tuple[int, ...], ...]
    fixed_point: bool  # every sum exact (deterministic, mergeable without rounding)
    sql: str

    @property
    def n_regions(self) -> int:
        return self.table.num_rows

    def counts(self) -> np.ndarray:
        return self.table.column(N_COL).to_numpy().astype(np.int64)


def fraction_bits(binning: Binning, extent: Extent, e: tuple[int, ...]) -> int | None:
    """Power of two for the fixed-point sum of monomial ``e``; None means sum in DOUBLE."""
    log_bound = 0.0
    for j, p in enumerate(e):
        if p == 0:
            continue
        lo, hi = extent.minimum[j], extent.maximum[j]
        if lo is None:
            continue
        b = max(abs(lo - binning.center[j]), abs(hi - binning.center[j])) / binning.scale[j]
        log_bound += p * math.log2(max(b * (1 + 1e-9), 1.0) + 1e-12)
    bits = min(int(math.floor(_HEADROOM_BITS - log_bound - 1)), _MAX_FRACTION_BITS)
    return bits if bits >= _MIN_FRACTION_BITS else None


def keyed_rows_sql(from_sql: str, binning: Binning, categorical: tuple[str, ...], carry: tuple[str, ...] = (),
                   part: tuple[int, int] | None = None) -> str:
    """Rows of ``from_sql`` with categoricals, DOUBLE values ``value_col(j)``, z-scores and region keys.

    ``carry`` names further columns passed through unchanged. ``part=(k, K)`` keeps only the
    regions whose key hashes to k modulo K (see :func:`moment_parts`).
    """
    q = len(binning.quantitative)
    cats = [ident(c) for c in categorical + carry]
    v, z = [value_col(j) for j in range(q)], [z_col(j) for j in range(q)]
    keys = binning.key_columns()
    stage1 = comma(cats + [f"{binning.value_sql(j)} AS {v[j]}" for j in range(q)])
    stage2 = comma(cats + v + [f"{binning.z_sql(j, v[j])} AS {z[j]}" for j in range(q)])
    stage3 = comma(cats + v + z + [f"{expr} AS {k}" for expr, k in zip(binning.key_sql(v, z), keys)])
    # aliased subqueries: plain SQL that PostgreSQL (< 16) accepts too
    sql = f"SELECT {stage3} FROM (SELECT {stage2} FROM (SELECT {stage1} FROM {from_sql}) AS __dq_s1) AS __dq_s2"
    if part is None or part[1] <= 1:
        return sql
    region = comma([ident(c) for c in categorical] + keys) or "0"
    return f"SELECT * FROM ({sql}) AS __dq_s3 WHERE hash({region}) % {int(part[1])} = {int(part[0])}"


def moment_sql(from_sql: str, binning: Binning, extent: Extent, categorical: tuple[str, ...], degree: int,
               part: tuple[int, int] | None = None) -> str:
    """The moment query over the FROM item ``from_sql``: one row per region, sorted by region key.

    Each power sum is an exact ``HUGEINT`` total of terms scaled by ``2**fraction_bits`` (or a
    DOUBLE sum where the range is too wide for fixed point), so partial tables add exactly.
    """
    q = len(binning.quantitative)
    cats = [ident(c) for c in categorical]
    v, z = [value_col(j) for j in range(q)], [z_col(j) for j in range(q)]
    keys = binning.key_columns()
    aggs = [f"count(*)::BIGINT AS {N_COL}"]
    for j in range(q):
        aggs += [f"min({v[j]}) AS {min_col(j)}", f"max({v[j]}) AS {max_col(j)}"]
    for e in exponents(q, degree):
        term = " * ".join(z[j] for j, p in enumerate(e) for _ in range(p))
        bits = fraction_bits(binning, extent, e)
        if bits is None:
            aggs.append(f"sum({term}) AS {moment_col(e)}")
        else:
            aggs.append(f"sum(({term} * {literal(float(2.0 ** bits))})::BIGINT) AS {moment_col(e)}")
    group = comma(cats + keys)
    return (f"SELECT {comma(cats + keys + aggs)}\n"
            f"FROM ({keyed_rows_sql(from_sql, binning, categorical, part=part)}) AS __dq_keyed\n"
            + (f"GROUP BY {group}\nORDER BY {key_order(list(categorical) + keys)}" if group else ""))


def small_rows_sql(from_sql: str, binning: Binning, categorical: tuple[str, ...], regions_sql: str, k: int,
                   part: tuple[int, int] | None = None) -> str:
    """The sorted value lists (``min([values], k)``) of the rows of the regions listed by ``regions_sql``.

    A second aggregate over only those (tiny) regions' rows: a list state for every region would
    not fit a 1GB memory limit with 100k+ regions, and collecting them inside the moment pass
    cost every region of every query (5M rows: 0.66 s CPU of 7.5 s).
    """
    keys = list(categorical) + binning.key_columns()
    v = [value_col(j) for j in range(len(binning.quantitative))]
    sel = comma([f"s.{ident(c)}" for c in keys] + [f"min([{comma('s.' + c for c in v)}], {int(k)}) AS {ROWS_COL}"])
    return (f"SELECT {sel} FROM ({keyed_rows_sql(from_sql, binning, categorical, part=part)}) AS s "
            f"SEMI JOIN ({regions_sql}) AS t ON {key_match('s', 't', keys)}"
            + (f" GROUP BY {comma(f's.{ident(c)}' for c in keys)}" if keys else ""))


_MAX_PARTS = 64  # passes at most; beyond that raise memory_limit
_STATE_BYTES = 32  # hash-table bytes per aggregate per region per thread (measured ~20 at 137 aggregates)


def moment_parts(con: duckdb.DuckDBPyConnection, n_regions: int, n_aggregates: int) -> int:
    """How many passes the moment GROUP BY needs so that its hash tables fit half the memory limit.

    With 100k+ regions the 125 exact sums per region outgrow ``memory_limit='1GB'`` (DuckDB does
    not spill these states); the regions are then split by key hash into parts, one pass each.
    """
    limit = con.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]
    number, _, unit = str(limit[0]).strip().partition(" ")
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
             "TIB": 2**40}.get(unit.strip().upper())
    try:
        budget = float(number) * scale / 2 if scale else None
    except ValueError:
        budget = None
    if not budget:
        return 1
    need = float(n_regions) * n_aggregates * _STATE_BYTES * max(int(limit[1]), 1)
    return int(min(_MAX_PARTS, max(1, math.ceil(need / budget))))


def region_bound(binning: Binning, sample: pa.Table | None, categorical: tuple[str, ...], n_rows: int) -> int:
    """A rough upper bound on the number of regions: categorical cells seen in the sample x key values."""
    n_cells = 1
    if categorical and sample is not None and sample.num_rows:
        try:
            n_cells = sample.group_by(list(categorical)).aggregate([]).num_rows
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # e.g. nested types
            n_cells = sample.num_rows
    per_cell = 1
    if binning.method == "hyprect":
        for e in binning.edges:
            per_cell *= len(e) + 2  # bins plus the NULL bin
    elif binning.quantitative:
        q = len(binning.quantitative)
        per_cell = (2 ** q) * (len(binning.layer_edges) + 1) * (2 * q) ** 2
    return int(min(n_rows, max(n_cells, 1) * per_cell))


def assign_regions(con: duckdb.DuckDBPyConnection, binning: Binning, moments: MomentTable,
                   rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Region index (row of the moment table) and DOUBLE values of each of ``rows``; -1 if no region."""
    q = len(binning.quantitative)
    if q == 0 or rows.num_rows == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, q))
    v = [value_col(j) for j in range(q)]
    names = list(moments.categorical + moments.key_columns)
    reg = moments.table.select(names).append_column("__dq_region", pa.array(np.arange(moments.n_regions)))
    rows = rows.append_column("__dq_i", pa.array(np.arange(rows.num_rows)))
    with registered(con, rows, "rows") as rows_view, registered(con, reg, "reg") as reg_view:
        sql = (f"SELECT coalesce(r.__dq_region, -1) AS __dq_region{''.join(f', s.{c}' for c in v)} "
               f"FROM ({keyed_rows_sql(ident(rows_view), binning, moments.categorical, ('__dq_i',))}) s "
               f"LEFT JOIN {ident(reg_view)} r ON {key_match('s', 'r', names)} ORDER BY s.__dq_i")
        out = con.sql(sql).to_arrow_table()
    idx = out.column("__dq_region").to_numpy()
    return idx, float_matrix(out, tuple(v))
