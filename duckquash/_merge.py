"""Mergeable moments: a frozen squash plan, the partial moment SQL it emits, and exact merging.

A :class:`SquashPlan` fixes everything a moment table depends on: the spec, the binning
(standardisation constants, bin edges or sphere layers) and the fixed-point range. Any number of
partial moment tables computed with :meth:`SquashPlan.moment_sql` (one query per partition, file,
machine or appended batch) then add up exactly: every power sum is a ``HUGEINT`` count of
``2**-bits`` units, counts are integers, minima/maxima are minima/maxima, and the few rows kept
for tiny regions (``min([values], k)``, the k smallest value lists) merge as the k smallest of the
union (a region of at most k rows keeps all its rows as a sorted list; larger regions keep
none, and a region small in the union was small in every partition). So the merged table is bit-identical to the table of the union, whatever the split.

Stored integer moment table columns (one row per region)::

    <categorical columns>, <binning key columns __dq_bin_j | __dq_miss, __dq_layer, __dq_pyr, __dq_pyr2>,
    __dq_n BIGINT, __dq_min_j DOUBLE, __dq_max_j DOUBLE,
    __dq_m_<e> HUGEINT (fixed point: value * 2**bits(e)) or DOUBLE (too wide for fixed point),
    __dq_rows DOUBLE[][] (only when fetch_rows > 0: a region's value lists, sorted, when it has at
                          most k = fetch_rows rows; NULL for larger regions)
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ._binning import Binning, Extent, fit_binning
from ._errors import InputError
from ._generate import exact_row_limit, generate
from ._moments import (N_COL, ROWS_COL, MomentTable, _fraction_bits, assign_regions, exponents, keyed_rows_sql,
                       max_col, min_col, moment_col, moment_sql as _moment_sql)
from ._source import Source, resolve
from ._spec import SquashSpec
from ._sql import comma, ident, literal

PLAN_VERSION = 1
_WIDEN = 2.0  # fixed-point range: twice the observed distance from the centre (room for drift)


@dataclass(frozen=True)
class SquashPlan:
    """What a moment table depends on: spec, binning, fixed-point range, rows kept per tiny region.

    Build one with :func:`squash_plan` (or read a materialised view's with :func:`view_plan`);
    ship it as JSON (:meth:`to_json`) to wherever partitions are momentized.
    """

    spec: SquashSpec
    binning: Binning
    extent: Extent  # the fixed-point range (observed range widened); also the overflow guard
    observed: Extent  # min/max the binning pass saw (drift is measured against it)
    fetch_rows: int
    column_types: tuple[tuple[str, str], ...]  # source type of each input column

    @property
    def exps(self) -> tuple[tuple[int, ...], ...]:
        return tuple(exponents(len(self.binning.quantitative), self.spec.degree))

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(self.spec.categorical) + tuple(self.binning.key_columns())

    def bits(self) -> dict[tuple[int, ...], int | None]:
        """Fraction bits of each moment's fixed-point sum (None: summed in DOUBLE)."""
        return {e: _fraction_bits(self.binning, self.extent, e) for e in self.exps}

    @property
    def fixed_point(self) -> bool:
        return all(b is not None for b in self.bits().values())

    def moment_sql(self, from_sql: str, *, rows: bool = True, dialect: str = "duckdb",
                   part: tuple[int, int] | None = None) -> str:
        """Plain SQL computing one partial integer moment table from ``from_sql`` (a FROM item).

        ``rows=False`` drops the DuckDB-only ``min(list, k)`` aggregate; the merged table then
        fits tiny regions instead of keeping their rows. ``dialect="postgres"`` (implies
        ``rows=False``) spells DOUBLE as DOUBLE PRECISION; the sums then come back as NUMERIC,
        exactly the integers DuckDB computes (both engines round a DOUBLE to BIGINT half to even).
        HypRect plans only: Data Sphere keys use DuckDB list functions. ``part=(k, K)``: only the
        regions whose key hashes to k modulo K (DuckDB; see :func:`duckquash._moments.moment_parts`).
        """
        if dialect not in ("duckdb", "postgres"):
            raise InputError(f"dialect must be 'duckdb' or 'postgres', got {dialect!r}")
        if dialect == "postgres" and self.binning.method != "hyprect":
            raise InputError("moment SQL for PostgreSQL is available for HypRect plans only")
        rows = rows and dialect == "duckdb"
        sql, _, _ = _moment_sql(Source(from_sql, {}, "partition"), self.binning, self.extent,
                                self.spec.categorical, self.spec.degree, 0, integer_sums=True, part=part)
        if dialect == "postgres":
            return sql.replace("::DOUBLE", "::DOUBLE PRECISION")
        if not (rows and self.fetch_rows > 0 and self.binning.quantitative):
            return sql
        return self._with_rows(sql, from_sql, part)

    def _with_rows(self, sql: str, from_sql: str, part: tuple[int, int] | None = None) -> str:
        """Add the rows of tiny regions: ``min([values], k)`` over regions of at most k rows, NULL elsewhere.

        A second aggregate over only those regions' rows: a list state for every region would
        not fit a 1GB memory limit with 100k+ regions. A region of the union has at most k rows
        only if it has at most k in every partition, so merged lists stay exact where used.
        """
        keys = list(self.key_columns)
        k = int(self.fetch_rows)
        v = [f"__dq_v_{j}" for j in range(len(self.binning.quantitative))]
        match = lambda a, b: " AND ".join(f"{a}.{ident(c)} IS NOT DISTINCT FROM {b}.{ident(c)}" for c in keys) or "TRUE"  # noqa: E731
        small = f"SELECT {comma(ident(c) for c in keys)} FROM __dq_m WHERE {ident(N_COL)} <= {k}"
        lists = (f"SELECT {comma([f's.{ident(c)}' for c in keys] + [f'min([{comma(v)}], {k}) AS {ident(ROWS_COL)}'])} "
                 f"FROM ({keyed_rows_sql(from_sql, self.binning, self.spec.categorical, part=part)}) AS s "
                 f"SEMI JOIN ({small}) AS t ON {match('s', 't')}"
                 + (f" GROUP BY {comma(f's.{ident(c)}' for c in keys)}" if keys else ""))
        order = comma(f"m.{ident(c)} NULLS FIRST" for c in keys)
        return (f"WITH __dq_m AS ({sql}) SELECT m.*, l.{ident(ROWS_COL)} FROM __dq_m AS m "
                f"LEFT JOIN ({lists}) AS l ON {match('m', 'l')}" + (f" ORDER BY {order}" if keys else ""))

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, "spec": self.spec.as_dict(), "binning": asdict(self.binning),
                           "extent": asdict(self.extent), "observed": asdict(self.observed),
                           "fetch_rows": self.fetch_rows, "column_types": [list(t) for t in self.column_types]})

    @classmethod
    def from_json(cls, text: str) -> SquashPlan:
        d = json.loads(text)
        if d.get("version") != PLAN_VERSION:
            raise InputError(f"unsupported squash plan version {d.get('version')!r} (this duckquash reads {PLAN_VERSION})")
        b = d["binning"]
        binning = Binning(b["method"], tuple(b["quantitative"]), tuple(b["float_columns"]), tuple(b["center"]),
                          tuple(b["scale"]), tuple(tuple(e) for e in b["edges"]), tuple(b["layer_edges"]),
                          b["split_outer"])
        ext = lambda e: Extent(e["n_rows"], tuple(e["minimum"]), tuple(e["maximum"]))  # noqa: E731
        return cls(SquashSpec(**d["spec"]), binning, ext(d["extent"]), ext(d["observed"]), int(d["fetch_rows"]),
                   tuple((a, t) for a, t in d["column_types"]))


def _widened(binning: Binning, observed: Extent, factor: float) -> Extent:
    lo, hi = [], []
    for j in range(len(binning.quantitative)):
        a, b = observed.minimum[j], observed.maximum[j]
        if a is None:
            lo.append(None)
            hi.append(None)
            continue
        c = binning.center[j]
        r = max(abs(a - c), abs(b - c)) * factor
        lo.append(min(a, c - r))
        hi.append(max(b, c + r))
    return Extent(observed.n_rows, tuple(lo), tuple(hi))


def plan_from_source(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec) -> tuple[SquashPlan, pa.Table]:
    """Fit the binning on ``src`` and fix the fixed-point range; returns the plan and the sample rows."""
    src.check_columns(spec.columns, spec.quantitative)
    binning, observed, sample = fit_binning(con, src, spec)
    extent = _widened(binning, observed, _WIDEN)
    if any(_fraction_bits(binning, extent, e) is None for e in exponents(len(spec.quantitative), spec.degree)):
        extent = observed  # widening would push some sums out of fixed point: keep the observed range
    fetch_rows = exact_row_limit(spec.alpha, len(spec.quantitative)) if spec.alpha > 0 else 0
    types = tuple((c, src.columns[c]) for c in spec.columns)
    return SquashPlan(spec, binning, extent, observed, fetch_rows, types), sample


def squash_plan(con: duckdb.DuckDBPyConnection, source: object, *, categorical: Sequence[str] | str = (),
                quantitative: Sequence[str] | str = (), method: str = "hyprect", alpha: float = 1.0,
                weight: str = "weight", seed: int = 0, bins: int = 3, layers: int = 3, **options) -> SquashPlan:
    """Fix a squash's binning from ``source`` (all data, a sample, or one representative partition).

    The returned plan emits the moment SQL for each partition (:meth:`SquashPlan.moment_sql`);
    :func:`squash_from_moments` merges the partial tables and generates the squashed table.
    Values outside the plan's fixed-point range make a partition's query fail loudly (BIGINT
    overflow) rather than give wrong sums; build the plan on data covering every partition's range.
    """
    spec = SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, **options)
    src = resolve(con, source)
    try:
        plan, _ = plan_from_source(con, src, spec)
    finally:
        src.close()
    return plan


# --------------------------------------------------------------------------- merging

def _key_match(a: str, b: str, keys: Sequence[str]) -> str:
    return " AND ".join(f"{a}.{ident(k)} IS NOT DISTINCT FROM {b}.{ident(k)}" for k in keys) or "TRUE"


def merge_sql(plan: SquashPlan, from_items: Sequence[str], *, rows: bool = True) -> str:
    """SQL adding partial integer moment tables (FROM items) into one, region by region, exactly.

    ``rows``: every input carries the ``__dq_rows`` lists; the merged list holds the
    ``fetch_rows`` smallest of their union, which is what one ``min(list, k)`` over all rows gives.
    """
    keys = [ident(k) for k in plan.key_columns]
    q = len(plan.binning.quantitative)
    bits = plan.bits()
    cols = keys + [ident(N_COL)] + [ident(c) for j in range(q) for c in (min_col(j), max_col(j))]
    cols += [ident(moment_col(e)) for e in plan.exps]
    union = " UNION ALL ".join(f"SELECT {comma(cols + ([ident(ROWS_COL)] if rows else []))} FROM {f}"
                               for f in from_items)
    aggs = [f"sum({ident(N_COL)})::BIGINT AS {ident(N_COL)}"]
    for j in range(q):
        aggs += [f"min({ident(min_col(j))}) AS {ident(min_col(j))}", f"max({ident(max_col(j))}) AS {ident(max_col(j))}"]
    for e in plan.exps:
        c = ident(moment_col(e))
        aggs.append(f"sum({c})::HUGEINT AS {c}" if bits[e] is not None else f"sum({c})::DOUBLE AS {c}")
    group = f"GROUP BY {comma(keys)}" if keys else ""
    merged = f"SELECT {comma(keys + aggs)} FROM ({union}) {group}"
    if not (rows and plan.fetch_rows > 0 and q):
        return merged
    lists = (f"SELECT {comma(keys + [f'min(__dq_r, {int(plan.fetch_rows)}) AS {ident(ROWS_COL)}'])} "
             f"FROM (SELECT {comma(keys + [f'unnest({ident(ROWS_COL)}) AS __dq_r'])} FROM ({union})) {group}")
    return (f"SELECT m.*, CASE WHEN m.{ident(N_COL)} <= {int(plan.fetch_rows)} THEN l.{ident(ROWS_COL)} END "
            f"AS {ident(ROWS_COL)} FROM ({merged}) m LEFT JOIN ({lists}) l ON {_key_match('m', 'l', plan.key_columns)}")


def double_sql(plan: SquashPlan, from_item: str, *, rows: bool = True, extra: Sequence[str] = ()) -> str:
    """An integer moment table as the DOUBLE moment table the generator reads, sorted by region key.

    Each fixed-point sum becomes ``total::DOUBLE * 2**-bits``: the very expression a one-shot
    squash evaluates, so the DOUBLE values are identical to a fresh squash's.
    """
    keys = [ident(k) for k in plan.key_columns]
    q = len(plan.binning.quantitative)
    sel = keys + [ident(c) for c in extra] + [ident(N_COL)]
    sel += [ident(c) for j in range(q) for c in (min_col(j), max_col(j))]
    for e, b in plan.bits().items():
        c = ident(moment_col(e))
        sel.append(f"{c}::DOUBLE * {literal(float(2.0 ** -b))} AS {c}" if b is not None else f"{c}::DOUBLE AS {c}")
    if rows and plan.fetch_rows > 0 and q:
        sel.append(ident(ROWS_COL))
    order = f" ORDER BY {comma(k + ' NULLS FIRST' for k in keys)}" if keys else ""
    return f"SELECT {comma(sel)} FROM {from_item}{order}"


def moment_table(plan: SquashPlan, table: pa.Table, sql: str) -> MomentTable:
    """Wrap a DOUBLE moment table (from :func:`double_sql`) for the generator."""
    return MomentTable(table, plan.spec.categorical, tuple(plan.binning.key_columns()), plan.exps,
                       plan.fixed_point, sql)


def generate_points(con: duckdb.DuckDBPyConnection, plan: SquashPlan, moments: MomentTable,
                    sample: pa.Table | None) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """Generate pseudo-points for ``moments``; returns (points, region diagnostics, region index per point).

    ``sample``: raw rows whose members seed the solver in their regions (None: random starts).
    """
    q = len(plan.binning.quantitative)
    has_rows = ROWS_COL in moments.table.column_names
    fetch = plan.fetch_rows if has_rows else 0
    if sample is not None and sample.num_rows:
        starts = assign_regions(con, plan.binning, moments, sample)
    else:
        starts = (np.empty(0, dtype=np.int64), np.empty((0, q)))
    out = generate(moments, plan.binning, plan.spec, fetch, starts)
    counts = out.regions.column("n_points").to_numpy()
    return out.table, out.regions, np.repeat(np.arange(moments.n_regions), counts)


def _as_from_items(con: duckdb.DuckDBPyConnection, tables: Sequence[object]) -> tuple[list[str], list]:
    """Table names, SQL FROM items, Arrow tables or relations as FROM items (and cleanups)."""
    items, cleanup = [], []
    for t in tables:
        if isinstance(t, (pa.Table, duckdb.DuckDBPyRelation)):
            view = f"__dq_part_{uuid.uuid4().hex[:12]}"
            if isinstance(t, pa.Table):
                con.register(view, t)
                cleanup.append(lambda v=view: con.unregister(v))
            else:
                t.create_view(view, replace=False)
                cleanup.append(lambda v=view: con.execute(f"DROP VIEW IF EXISTS {ident(v)}"))
            items.append(ident(view))
        elif isinstance(t, str):
            items.append(resolve(con, t).sql)
        else:
            raise InputError(f"a moment table must be a table name, query, Arrow table or relation, got {type(t).__name__}")
    return items, cleanup


def check_moment_columns(con: duckdb.DuckDBPyConnection, plan: SquashPlan, from_item: str, label: str) -> bool:
    """Raise if ``from_item`` lacks a column the plan's moment tables have; return whether it has row lists."""
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {from_item}").fetchall()}
    q = len(plan.binning.quantitative)
    need = list(plan.key_columns) + [N_COL] + [c for j in range(q) for c in (min_col(j), max_col(j))]
    need += [moment_col(e) for e in plan.exps]
    missing = [c for c in need if c not in have]
    if missing:
        raise InputError(f"{label} is not a moment table of this plan: missing column(s) {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}")
    return ROWS_COL in have


def merge_moments(con: duckdb.DuckDBPyConnection, plan: SquashPlan, tables: Sequence[object]) -> duckdb.DuckDBPyRelation:
    """Add partial integer moment tables (names, queries, Arrow tables or relations) into one relation.

    The result is exactly the moment table of the union of the partitions (see module docstring).
    """
    if not tables:
        raise InputError("merge_moments needs at least one moment table")
    items, cleanup = _as_from_items(con, tables)
    try:
        rows = all(check_moment_columns(con, plan, f, f"moment table #{i + 1}") for i, f in enumerate(items))
        return con.sql(merge_sql(plan, items, rows=rows)).to_arrow_table()
    finally:
        for c in cleanup:
            c()


def squash_from_moments(con: duckdb.DuckDBPyConnection, plan: SquashPlan, tables: Sequence[object], *,
                        into: str | Sequence[str] | None = None, replace: bool = False, sample: object = None):
    """Merge partial moment tables and generate the squashed table ``into``.

    Parameters
    ----------
    plan : SquashPlan
        The plan every partial table was computed with (:func:`squash_plan` or :func:`view_plan`).
    tables : list
        Partial integer moment tables: table names, queries, Arrow tables or relations.
    into, replace
        Output table, as for :func:`duckquash.squash`.
    sample : source, optional
        Rows to seed the solver with (e.g. one partition); default: random starts. The same
        moments, plan and sample always give the same output.
    """
    from ._squash import SquashReport, SquashResult  # the pipeline module imports this one
    from ._writeback import check_table_target, table_name, write_table

    parts = table_name(into if into is not None else f"squashed_{uuid.uuid4().hex[:8]}")
    check_table_target(con, parts, replace)
    t0 = time.perf_counter()
    merged = merge_moments(con, plan, tables)
    view = f"__dq_merged_{uuid.uuid4().hex[:12]}"
    con.register(view, merged)
    try:
        sql = double_sql(plan, ident(view), rows=ROWS_COL in merged.column_names)
        moments = moment_table(plan, con.sql(sql).to_arrow_table(), sql)
    finally:
        con.unregister(view)
    t1 = time.perf_counter()
    smp = None
    if sample is not None:
        src = resolve(con, sample)
        try:
            from ._binning import sample_sql
            smp = con.sql(sample_sql(src, plan.spec)).to_arrow_table()
        finally:
            src.close()
    data, regions, _ = generate_points(con, plan, moments, smp)
    t2 = time.perf_counter()
    write_table(con, data, parts, replace)
    timings = {"merge": t1 - t0, "generate": t2 - t1, "write": time.perf_counter() - t2}
    report = SquashReport(plan.spec.as_dict(), timings, regions, moments, plan.binning)
    n = int(moments.counts().sum())
    return SquashResult(con, ".".join(parts), n, data.num_rows, regions.num_rows, report, parts)


def overflow_columns(plan: SquashPlan, lo: Sequence[float | None], hi: Sequence[float | None]) -> list[str]:
    """Quantitative columns whose values in [lo, hi] could overflow a fixed-point term of the plan.

    A term of monomial e is below ``2**(log_bound(e) + bits(e))``; BIGINT holds ``2**63``.
    """
    binning = plan.binning
    bound = []
    for j in range(len(binning.quantitative)):
        if lo[j] is None:
            bound.append(0.0)
            continue
        b = max(abs(lo[j] - binning.center[j]), abs(hi[j] - binning.center[j])) / binning.scale[j]
        bound.append(math.log2(max(b * (1 + 1e-9), 1.0) + 1e-12))
    bad: set[str] = set()
    for e, bits in plan.bits().items():
        if bits is None:
            continue
        if sum(p * bound[j] for j, p in enumerate(e)) + bits > 62.5:
            bad.update(binning.quantitative[j] for j, p in enumerate(e) if p and bound[j] > 0)
    return sorted(bad)
