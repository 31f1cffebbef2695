"""Momentize: one generated SQL GROUP BY giving, per region, count, min, max and mixed power sums.

Power sums are of each row's values in its region's box units z = (x - mid) / half (Data
Spheres: global units), for the monomials the plan lists (all of degree <= 2, higher ones as
many as the largest region fits). Plans that outlive one pass (views, partitions, merges) keep
every sum as a fixed-point integer (``BIGINT`` terms, exact ``HUGEINT`` total) scaled by a power
of two chosen so no term can overflow: integer addition is associative, so partial moment tables
(partitions, appended batches) add exactly and the result is the same whatever the thread count
or scan order. A one-shot squash uses compensated DOUBLE sums (``fsum``) instead, which are 2.5x
cheaper; the same input gave the same sums in every run measured (see ``benchmarks/squash_20m.py``).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

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
# At most 2**-52 resolution: in box units (|z| <= 1) that is DOUBLE's own precision. 2**-40 (the
# cap when sums were in global units) left regions whose spread is small against their box with
# covariance errors above 1e-9 sd^2 (7 rows in an outer HypRect bin: 1.6e-9). On DuckDB 2.0 the
# cap costs nothing: 5M rows, 125 sums, 12 groups: 5.78 s CPU at 2**-40, 5.92 s at 2**-52
# (fsum: 2.34 s, plain DOUBLE sum: 1.33 s but not the same result twice).
_MAX_FRACTION_BITS = 52


def _compositions(q: int, d: int) -> list[tuple[int, ...]]:
    """Every exponent vector of length q with total degree exactly d (C(q + d - 1, d) of them)."""
    if q == 1:
        return [(d,)]
    return [(p,) + rest for p in range(d, -1, -1) for rest in _compositions(q - 1, d - p)]


def exponents(q: int, degree: int) -> list[tuple[int, ...]]:
    """All power vectors of total degree 1..degree, lowest order first, pure powers before mixed.

    Enumerated directly (polynomial in q: 494 for q = 8 and degree 4, 10,625 for q = 20), not by
    filtering the (degree + 1)^q grid.
    """
    if q == 0:
        return []
    out = [e for d in range(1, degree + 1) for e in _compositions(q, d)]
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


def fraction_bits(bound: Sequence[float], e: tuple[int, ...]) -> int | None:
    """Power of two for the fixed-point sum of monomial ``e`` given each column's largest |unit|
    (:meth:`Binning.z_bound`); None means sum in DOUBLE."""
    log_bound = sum(p * math.log2(max(b * (1 + 1e-9), 1.0) + 1e-12) for b, p in zip(bound, e) if p)
    bits = min(int(math.floor(_HEADROOM_BITS - log_bound - 1)), _MAX_FRACTION_BITS)
    return bits if bits >= _MIN_FRACTION_BITS else None


def reframe(raw: dict[tuple[int, ...], np.ndarray], n: np.ndarray, shift: np.ndarray, stretch: np.ndarray,
            targets: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
    """Power sums in other units: with ``u = shift + stretch * z`` per column (arrays (R, q), one row
    per region), ``sum(prod u^e)`` for each target ``e`` from the sums ``raw[k] = sum(prod z^k)``
    (binomial expansion; every ``k <= e`` must be in ``raw``, ``n`` is the count)."""
    out = {}
    nf = np.asarray(n, dtype=float)
    for e in targets:
        acc = np.zeros_like(nf)
        for k in itertools.product(*(range(p + 1) for p in e)):
            coef = np.ones_like(nf)
            for j, (p, kj) in enumerate(zip(e, k)):
                if p:
                    coef = coef * (math.comb(p, kj) * shift[:, j] ** (p - kj) * stretch[:, j] ** kj)
            acc = acc + coef * (nf if not any(k) else raw[tuple(k)])
        out[tuple(e)] = acc
    return out


def keyed_rows_sql(from_sql: str, binning: Binning, categorical: tuple[str, ...], carry: tuple[str, ...] = (),
                   part: tuple[int, int] | None = None, scalar_nodes: bool = False) -> str:
    """Rows of ``from_sql`` with categoricals, DOUBLE values ``value_col(j)``, region keys and the values
    in their region's power-sum units ``z_col(j)`` (see :class:`Binning`).

    ``carry`` names further columns passed through unchanged. ``part=(k, K)`` keeps only the
    regions whose key hashes to k modulo K (see :func:`moment_parts`). Adaptive binnings read the
    tables of :meth:`Binning.aux_tables` (see :func:`attached`); ``scalar_nodes``: see
    :meth:`Binning.adaptive_keys_sql` (for Spark).
    """
    q = len(binning.quantitative)
    cats = [ident(c) for c in categorical + carry]
    v, z = [value_col(j) for j in range(q)], [z_col(j) for j in range(q)]
    keys = binning.key_columns()
    # aliased subqueries: plain SQL that PostgreSQL (< 16) accepts too
    sql = f"SELECT {comma(cats + [f'{binning.value_sql(j)} AS {v[j]}' for j in range(q)])} FROM {from_sql}"
    if binning.method == "adaptive" and q:  # the node lists it attaches are dropped by the last SELECT
        sql = binning.adaptive_keys_sql(sql, categorical, v, scalar_nodes)
        g = [None] * q
    else:
        g = [f"__dq_g_{j}" for j in range(q)]
        if binning.method == "datasphere":
            sql = f"SELECT *, {comma(f'{binning.z_sql(j, v[j])} AS {g[j]}' for j in range(q))} FROM ({sql}) AS __dq_s1"
        if keys:
            sql = (f"SELECT *, {comma(f'{e} AS {k}' for e, k in zip(binning.key_sql(v, g), keys))} "
                   f"FROM ({sql}) AS __dq_s2")
    if q:
        zs = comma(f"{binning.local_z_sql(j, v[j], g[j], scalar_nodes)} AS {z[j]}" for j in range(q))
        sql = f"SELECT {comma(cats + v + keys)}, {zs} FROM ({sql}) AS __dq_s3"
    if part is None or part[1] <= 1:
        return sql
    region = comma([ident(c) for c in categorical] + keys) or "0"
    return f"SELECT * FROM ({sql}) AS __dq_s4 WHERE hash({region}) % {int(part[1])} = {int(part[0])}"


def _present(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the temporary views and tables on ``con`` (registered Arrow data among them)."""
    views = con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()
    tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    return {r[0] for r in views + tables}


@contextlib.contextmanager
def attached(con: duckdb.DuckDBPyConnection, binning: Binning) -> Iterator[None]:
    """The binning's auxiliary tables (adaptive regions' cells and nodes) registered on ``con`` for the
    body, under the names its SQL uses; re-entrant (tables already there are left alone)."""
    tables = binning.aux_tables()
    mine = [name for name in tables if name not in _present(con)] if tables else []
    for name in mine:
        con.register(name, tables[name])
    try:
        yield
    finally:
        for name in mine:
            con.unregister(name)


def install_aux(con: duckdb.DuckDBPyConnection, binning: Binning) -> None:
    """The binning's auxiliary tables as TEMP tables of ``con`` (kept for the connection's lifetime),
    so that its moment SQL runs there as plain SQL; a no-op when they exist or none are needed."""
    tables = binning.aux_tables()
    present = _present(con) if tables else set()
    for name, table in tables.items():
        if name not in present:
            with registered(con, table, "aux") as view:
                con.execute(f"CREATE TEMP TABLE {ident(name)} AS SELECT * FROM {ident(view)}")


CLUSTER_STATES = 250_000  # regions x aggregates from which the rows are sorted by region before the GROUP BY


def clustered(n_regions: int, n_aggregates: int) -> bool:
    """Whether the moment pass sorts its rows by region key before aggregating (DuckDB).

    The hash aggregate's states (about 24 bytes per aggregate per region) outgrow the caches
    with many regions, and rows in random region order then miss the cache on every update; in
    region order each chunk updates a few regions. Measured (2 cores, 2M rows, 125 ``fsum``):
    12 regions 0.72 s CPU unsorted / 1.80 s sorted, 1,000: 1.83 / 2.17, 3,000: 2.73 / 2.01,
    23,809: 6.6 / 2.6. The adaptive moment pass over 2M rows, 23,809 regions, 135 aggregates:
    11.3 -> 7.2 s CPU; 300k rows, 3,573 regions: 1.1 -> 0.77 s. Break-even is near 2,000
    regions of 125 sums, i.e. ``CLUSTER_STATES`` region-aggregates."""
    return n_regions * n_aggregates >= CLUSTER_STATES


def moment_sql(from_sql: str, binning: Binning, extent: Extent, categorical: tuple[str, ...],
               exps: Sequence[tuple[int, ...]], part: tuple[int, int] | None = None, exact: bool = True,
               scalar_nodes: bool = False, cluster: bool = False) -> str:
    """The moment query over the FROM item ``from_sql``: one row per region, sorted by region key.

    ``exact``: each power sum is an exact ``HUGEINT`` total of terms scaled by ``2**fraction_bits``
    (or a DOUBLE sum where the range is too wide for fixed point), so partial tables add exactly;
    otherwise a compensated DOUBLE sum (``fsum``). ``cluster``: the rows reach the GROUP BY in
    region order (an ``ORDER BY`` in the subquery, which DuckDB keeps; see :func:`clustered`).
    """
    q = len(binning.quantitative)
    cats = [ident(c) for c in categorical]
    v, z = [value_col(j) for j in range(q)], [z_col(j) for j in range(q)]
    keys = binning.key_columns()
    aggs = [f"count(*)::BIGINT AS {N_COL}"]
    for j in range(q):
        aggs += [f"min({v[j]}) AS {min_col(j)}", f"max({v[j]}) AS {max_col(j)}"]
    bound = binning.z_bound(extent.minimum, extent.maximum)
    for e in exps:
        term = " * ".join(z[j] for j, p in enumerate(e) for _ in range(p))
        bits = fraction_bits(bound, e) if exact else None
        if bits is None:
            aggs.append(f"{'sum' if exact else 'fsum'}({term}) AS {moment_col(e)}")
        else:
            aggs.append(f"sum(({term} * {literal(float(2.0 ** bits))})::BIGINT) AS {moment_col(e)}")
    group = comma(cats + keys)
    keyed = keyed_rows_sql(from_sql, binning, categorical, part=part, scalar_nodes=scalar_nodes)
    if cluster and group:  # the binning's keys first: an adaptive leaf alone nearly names its region
        keyed += f" ORDER BY {comma(keys + cats)}"
    return (f"SELECT {comma(cats + keys + aggs)}\n"
            f"FROM ({keyed}) AS __dq_keyed\n"
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


def region_rows(con: duckdb.DuckDBPyConnection, binning: Binning, moments: MomentTable, from_sql: str,
                regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``from_sql`` in the given regions (rows of the moment table), as (region index,
    DOUBLE values), ordered by region: one scan of the source, only the matching rows leave DuckDB."""
    q = len(binning.quantitative)
    v = [value_col(j) for j in range(q)]
    names = list(moments.categorical + moments.key_columns)
    reg = moments.table.select(names).take(pa.array(regions)).append_column(
        "__dq_region", pa.array(np.asarray(regions, dtype=np.int64)))
    with registered(con, reg, "reg") as reg_view, attached(con, binning):
        sql = (f"SELECT r.__dq_region{''.join(f', s.{c}' for c in v)} "
               f"FROM ({keyed_rows_sql(from_sql, binning, moments.categorical)}) s "
               f"JOIN {ident(reg_view)} r ON {key_match('s', 'r', names)} ORDER BY r.__dq_region")
        out = con.sql(sql).to_arrow_table()
    return out.column("__dq_region").to_numpy(), float_matrix(out, tuple(v))


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
