"""The one DS pipeline: Group -> Momentize -> Generate, built around a :class:`SquashPlan`.

Every data-squashing path runs through :func:`run`:

- a one-shot squash (:func:`duckquash.squash`) and a materialised view's build: Group (fit the
  plan on the source), Momentize (the integer moment pass), Generate;
- a merge of partial moment tables (:func:`duckquash.squash_from_moments`): the plan is given
  and Momentize is the exact sum of the partial tables (:func:`merge`), then Generate;
- a view's refresh: the stored plan, the stored sums plus the new rows' (:func:`momentize`,
  :func:`merge`), then Generate for the regions that need a new solve.

Moments are kept in a TEMP table as exact integer sums (mergeable, see ``plan.py``) and read
into Python only as the small DOUBLE table Generate needs (one row per region).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..io.progress import progress as progress_bar
from ..io.source import Source
from ..io.transaction import create_temp, drop_temp
from ..sql.build import key_match
from ..sql.names import LAYER, LEAF, MISS, N_COL, PYR, PYR2, ROWS_COL, bin_col
from ..sql.quote import comma, ident
from .generate import generate as solve
from .binning import float_matrix
from .moments import (MomentTable, assign_regions, attached, moment_parts, region_bound, region_rows,
                      small_rows_sql)
from .plan import SquashPlan, double_sql, merge_sql, plan_from_source
from .results import SquashReport
from .spec import SquashSpec


@dataclass(frozen=True)
class Squashed:
    """The pipeline's output before anything is written: points, and where they came from."""

    plan: SquashPlan
    points: pa.Table  # categoricals, quantitative (DOUBLE), weight; in region order
    point_region: np.ndarray  # row of ``moments`` each point belongs to
    regions: pa.Table  # one diagnostics row per region
    moments: MomentTable  # the DOUBLE moments Generate read (region order)
    sample: pa.Table | None = field(repr=False, default=None)  # the Group stage's sample rows, if it ran
    timings: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # process CPU seconds per stage

    @property
    def n_rows(self) -> int:
        return int(self.moments.counts().sum())

    def report(self) -> SquashReport:
        return SquashReport(self.plan.spec.as_dict(), self.timings, _readable(self.regions, self.plan),
                            self.moments, self.plan.binning, self.cpu, self.plan)


def _readable(regions: pa.Table, plan: SquashPlan) -> pa.Table:
    """The region report with readable key names (``missing``: bit j set when column j is NULL in
    the region; ``leaf``; ``bin[x1]``; ``layer``, ``pyramid``, ``pyramid2``); a name that is also a
    user column keeps its internal spelling."""
    q = plan.binning.quantitative
    names = {MISS: "missing", LEAF: "leaf", LAYER: "layer", PYR: "pyramid", PYR2: "pyramid2",
             **{bin_col(j): f"bin[{c}]" for j, c in enumerate(q)}}
    taken = set(regions.column_names)
    return regions.rename_columns([names[c] if c in names and names[c] not in taken else c
                                   for c in regions.column_names])


class _Clock:
    """Wall and process CPU seconds per stage (CPU is steadier than wall time on a shared machine)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.wall[name] = clock.wall.get(name, 0.0) + time.perf_counter() - self.t
                clock.cpu[name] = clock.cpu.get(name, 0.0) + time.process_time() - self.c
                return False

        return _Stage()


# --------------------------------------------------------------------------- Group

def predict_no_shrink(sample: pa.Table, categorical: tuple[str, ...], n_rows: int) -> str | None:
    """Why the output could not be smaller than the input, judged from the sample before the moment pass.

    Every distinct combination of categorical values needs at least one pseudo-point, so
    M >= C (combinations). When the sample holds every row, C is exact and C >= N refuses.
    Otherwise C is estimated from the sample (bias-corrected Chao1: D + f1(f1-1)/(2(f2+1)) with
    D combinations seen, f1 seen once, f2 seen twice) and refuses only when the estimate is at
    least 2N, i.e. for near-unique keys; borderline cases are left to the exact check after
    Generate. Returns None when no early refusal is due.
    """
    if not categorical or sample.num_rows == 0:
        return None
    cats = list(categorical)
    try:
        counts = sample.group_by(cats).aggregate([([], "count_all")]).column("count_all").to_numpy()
        levels = {c: len(sample.column(c).unique()) for c in cats}
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # e.g. nested types: leave it to the exact check
        return None
    seen, f1, f2 = len(counts), int(np.sum(counts == 1)), int(np.sum(counts == 2))
    if sample.num_rows >= n_rows:
        if seen < n_rows:
            return None
        return (f"its {n_rows:,} rows hold {seen:,} distinct combinations of the categorical columns "
                f"(levels per column: {levels}); every combination needs at least one pseudo-point. "
                "Drop or coarsen high-cardinality categorical columns")
    estimate = seen + f1 * (f1 - 1) / (2 * (f2 + 1))
    if estimate < 2 * n_rows:
        return None
    return (f"its {n_rows:,} rows hold an estimated {estimate:,.0f} distinct combinations of the categorical "
            f"columns (a {sample.num_rows:,}-row sample had {seen:,}, {f1:,} of them once; levels per "
            f"column in the sample: {levels}); every combination needs at least one pseudo-point. "
            "Drop or coarsen high-cardinality categorical columns")


def group(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec, *, reusable: bool,
          show_progress: bool = False, check_shrink: bool = False) -> tuple[SquashPlan, pa.Table]:
    """Fix the plan (binning, standardisation, fixed-point range) from ``src``; refuse early what cannot
    shrink (near-unique categorical keys; with ``check_shrink``, a predicted point count >= N)."""
    with progress_bar(con, "group", show_progress, scan_share=1 / 2):  # scan -> top-k -> result
        plan, sample = plan_from_source(con, src, spec, reusable=reusable)
    n = plan.observed.n_rows
    refusal = predict_no_shrink(sample, spec.categorical, n)  # the more specific reason first
    if refusal:
        raise InputError(f"squashing would not shrink {src.label}: {refusal}")
    if check_shrink and plan.predicted_points is not None and plan.predicted_points >= n:
        raise InputError(f"squashing would not shrink {src.label}: the sample predicts {plan.predicted_points:,.0f} "
                         f"pseudo-points for {n:,} rows (alpha={plan.spec.alpha:g}); lower alpha or size")
    return plan, sample


# --------------------------------------------------------------------------- Momentize

def momentize(con: duckdb.DuckDBPyConnection, plan: SquashPlan, from_sql: str, *, n_regions: int,
              rows: bool = True, show_progress: bool = False) -> str:
    """The integer moment table of the FROM item ``from_sql``, as a TEMP table; returns its name.

    With very many regions (``n_regions``, a bound) the pass is split by region key hash so its
    hash tables fit the memory limit (:func:`duckquash.ds.moments.moment_parts`); every region's
    sums then come whole from one part. With ``rows`` (and a plan that keeps tiny regions' rows)
    a second, small pass collects the rows of regions with at most ``plan.fetch_rows`` rows
    (only when there are any): the same lists ``plan.moment_sql(rows=True)`` gives in one query.
    The caller drops the table (:func:`duckquash.io.transaction.drop_temp`).
    """
    parts = moment_parts(con, n_regions, plan.n_aggregates)
    temps: list[str] = []
    try:
        with attached(con, plan.binning), progress_bar(con, "momentize", show_progress, scan_share=1 / 3):
            sums = create_temp(con, plan.moment_sql(from_sql, rows=False, part=(0, parts)), "moments")
            temps.append(sums)
            for k in range(1, parts):
                con.execute(f"INSERT INTO temp.{ident(sums)} {plan.moment_sql(from_sql, rows=False, part=(k, parts))}")
        if not (rows and plan.keeps_rows):
            return sums
        keys = list(plan.key_columns)
        small = (f"SELECT {comma(ident(c) for c in keys)} FROM temp.{ident(sums)} "
                 f"WHERE {ident(N_COL)} <= {int(plan.fetch_rows)}")
        if con.execute(f"SELECT count(*) FROM ({small})").fetchall()[0][0]:
            with attached(con, plan.binning):
                lists = create_temp(con, small_rows_sql(from_sql, plan.binning, plan.spec.categorical, small,
                                                        plan.fetch_rows), "rows")
            temps.append(lists)
            joined = (f"SELECT m.*, l.{ident(ROWS_COL)} FROM temp.{ident(sums)} AS m "
                      f"LEFT JOIN temp.{ident(lists)} AS l ON {key_match('m', 'l', keys)}")
        else:
            joined = f"SELECT *, NULL::DOUBLE[][] AS {ident(ROWS_COL)} FROM temp.{ident(sums)}"
        result = create_temp(con, joined, "moments")
    except BaseException:
        drop_temp(con, temps)
        raise
    drop_temp(con, temps)
    return result


def merge(con: duckdb.DuckDBPyConnection, plan: SquashPlan, from_items: Sequence[str], *, rows: bool) -> str:
    """The exact sum of partial integer moment tables (FROM items), as a TEMP table; returns its name."""
    return create_temp(con, merge_sql(plan, from_items, rows=rows), "merged")


# --------------------------------------------------------------------------- Generate

def read_moments(con: duckdb.DuckDBPyConnection, plan: SquashPlan, from_item: str, *, rows: bool,
                 extra: Sequence[str] = ()) -> MomentTable:
    """The DOUBLE moment table Generate reads, from an integer moment table (sorted by region key)."""
    sql = double_sql(plan, from_item, rows=rows, extra=extra)
    return MomentTable(con.sql(sql).to_arrow_table(), plan.spec.categorical, tuple(plan.binning.key_columns()),
                       plan.exps, plan.fixed_point, sql)


def generate(con: duckdb.DuckDBPyConnection, plan: SquashPlan, moments: MomentTable,
             sample: pa.Table | None, show_progress: bool = False, most: int | None = None):
    """Pseudo-points for every region of ``moments``; returns (points, region diagnostics, region of each point).

    ``sample``: raw rows whose members seed the solver in their regions (None: random starts).
    """
    q = len(plan.binning.quantitative)
    fetch = plan.fetch_rows if ROWS_COL in moments.table.column_names else 0
    if sample is not None and sample.num_rows:
        with attached(con, plan.binning):
            starts = assign_regions(con, plan.binning, moments, sample)
    else:
        starts = (np.empty(0, dtype=np.int64), np.empty((0, q)))
    with progress_bar(None, "generate", show_progress, total=moments.n_regions, unit="regions") as advance:
        out = solve(moments, plan.binning, plan.spec, fetch, starts, most, advance)
    counts = out.regions.column("n_points").to_numpy()
    return out.table, out.regions, np.repeat(np.arange(moments.n_regions), counts)


INEXACT_ROWS = 200_000  # the most rows fetched back for regions the solver could not match


def _rows_for_inexact(con, plan: SquashPlan, table: MomentTable, from_sql: str, points: pa.Table,
                      regions: pa.Table, idx: np.ndarray):
    """Regions the solver could not match exactly (kind "inexact") get their own rows, read back
    in one more scan of the source: exact in every moment, never a silently wrong region. Rare:
    one region of 4,138 on the heavy-tailed simulation (152 rows, 5 columns, error 6e-8 sd)."""
    kind = np.array(regions.column("kind").to_pylist(), dtype=object)
    n = regions.column("n_rows").to_numpy()
    bad = np.flatnonzero(kind == "inexact")
    if bad.size == 0 or int(n[bad].sum()) > INEXACT_ROWS:
        return points, regions, idx  # none, or too many: left flagged in the report (verify() shows them)
    rid, values = region_rows(con, plan.binning, table, from_sql, bad)
    keep = ~np.isin(idx, bad)
    new_idx = np.concatenate([idx[keep], rid])
    order = np.argsort(new_idx, kind="stable")
    cols = {}
    for c in points.column_names:
        if c in plan.spec.categorical:
            cols[c] = pa.concat_arrays([points.column(c).filter(pa.array(keep)).combine_chunks(),
                                        table.table.column(c).take(pa.array(rid)).combine_chunks()]).take(pa.array(order))
        elif c == plan.spec.weight:
            cols[c] = pa.array(np.concatenate([points.column(c).to_numpy()[keep], np.ones(len(rid))])[order])
    for j, c in enumerate(plan.binning.quantitative):
        x = np.concatenate([float_matrix(points, (c,))[keep, 0], values[:, j]])[order]
        cols[c] = pa.array(x, mask=np.isnan(x))
    points = pa.table({c: cols[c] for c in points.column_names})
    kind[bad] = "rows"
    counts = regions.column("n_points").to_numpy().copy()
    counts[bad] = np.bincount(rid, minlength=len(counts))[bad]
    err = regions.column("max_resid_deg2").to_numpy().copy()
    rms = regions.column("rms_resid_deg34").to_numpy().copy()
    err[bad] = rms[bad] = 0.0
    for name, arr in (("kind", pa.array(kind.astype(str))), ("n_points", pa.array(counts)),
                      ("max_resid_deg2", pa.array(err)), ("rms_resid_deg34", pa.array(rms))):
        regions = regions.set_column(regions.column_names.index(name), name, arr)
    return points, regions, new_idx[order]


# --------------------------------------------------------------------------- the pipeline

def run(con: duckdb.DuckDBPyConnection, plan: SquashPlan | SquashSpec, *, source: Source | None = None,
        moments: str | None = None, sample: pa.Table | None = None, extra: Sequence[str] = (),
        reusable: bool = True, check_shrink: bool = False, keep_moments: bool = False,
        show_progress: bool = False) -> tuple[Squashed, str | None]:
    """Group -> Momentize -> Generate; nothing is written.

    ``plan``: a :class:`SquashSpec` runs Group on ``source`` (``reusable``: see
    :func:`duckquash.ds.plan.plan_from_source`); a :class:`SquashPlan` skips it.
    ``moments``: an integer moment table (FROM item) to generate from, e.g. merged partial
    tables; otherwise Momentize runs over ``source``. ``extra``: moment-table columns carried
    into ``Squashed.moments`` (e.g. a view's region ids). ``sample``: solver starts (default:
    the Group stage's sample). ``check_shrink``: refuse an output that is not smaller than the input.
    ``keep_moments``: return the integer moment TEMP table's name instead of dropping it (the
    caller drops it); otherwise the second value is None.
    """
    clock = _Clock()
    temps: list[str] = []
    label = source.label if source is not None else "the moment tables"
    try:
        if isinstance(plan, SquashSpec):
            if source is None:
                raise InputError("a squash from a spec needs a source")
            with clock.stage("group"):
                plan, group_sample = group(con, source, plan, reusable=reusable, show_progress=show_progress,
                                           check_shrink=check_shrink)
            sample = group_sample if sample is None else sample
        if moments is None:
            if source is None:
                raise InputError("nothing to momentize: give a source or moment tables")
            with clock.stage("momentize"):
                bound = region_bound(plan.binning, sample, plan.spec.categorical, plan.observed.n_rows)
                moments = momentize(con, plan, source.sql, n_regions=bound, show_progress=show_progress)
                temps.append(moments)
                moments = f"temp.{ident(moments)}"
        with clock.stage("generate"):
            has_rows = ROWS_COL in {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {moments}").fetchall()}
            table = read_moments(con, plan, moments, rows=has_rows, extra=extra)
            most = int(table.counts().sum()) if check_shrink else None
            points, regions, idx = generate(con, plan, table, sample, show_progress, most)
            if source is not None:
                points, regions, idx = _rows_for_inexact(con, plan, table, source.sql, points, regions, idx)
        n, m = int(table.counts().sum()), points.num_rows
        if check_shrink and m >= n:
            levels = {c: len(set(table.table.column(c).to_pylist())) for c in plan.spec.categorical}
            raise InputError(
                f"squashing would not shrink {label}: {m:,} pseudo-points for {n:,} rows in "
                f"{table.n_regions:,} regions (levels per categorical column: {levels}); "
                "drop or coarsen high-cardinality categorical columns, or lower alpha/bins")
        kept = temps.pop() if keep_moments and temps else None
        return Squashed(plan, points, idx, regions, table, sample, clock.wall, clock.cpu), kept
    finally:
        drop_temp(con, temps)
