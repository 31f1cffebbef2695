"""Refresh a materialised view: fold new rows' moments into the stored sums, re-solve only what changed.

Every change runs in one transaction: readers see the old view or the new one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..ds import pipeline
from ..ds.binning import sample_sql
from ..ds.plan import SquashPlan, check_moment_columns, overflow_columns
from ..errors import InputError
from ..io.source import Source, drain_pending, resolve
from ..io.transaction import Transaction, refuse_open_transaction, create_temp, drop_temp, registered
from ..sql.build import key_match, key_order
from ..sql.names import N_COL, OLD_REGION, REGION
from ..sql.quote import comma, ident
from .build import build
from .storage import (BATCH_COLUMNS, BatchStats, ViewNames, batch_row, batch_stats, check_types, fingerprint,
                      log_batch, points_table, read_meta, source_record, stored_plan)
from .update import update_in_place


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did. ``drift``: share of new rows outside the range the binning saw."""

    name: str
    batch_id: str | None
    n_new_rows: int
    n_rows: int
    n_changed_regions: int
    n_new_regions: int
    n_points: int
    drift: float
    drift_by_column: dict[str, float]
    rebinned: bool
    timings: dict[str, float]
    n_updated_regions: int = 0  # of the changed regions, updated in closed form (the rest re-solved)

    def summary(self) -> str:
        worst = max(self.drift_by_column.items(), key=lambda kv: kv[1], default=("-", 0.0))
        return (f"refreshed {self.name!r}: +{self.n_new_rows:,} rows (now {self.n_rows:,}), "
                f"{self.n_changed_regions:,} regions changed ({self.n_new_regions:,} new, "
                f"{self.n_updated_regions:,} updated in closed form, the rest re-solved), "
                f"{self.n_points:,} points; drift {100 * self.drift:.2f}% of new rows outside the binned range "
                f"(most: {worst[0]} {100 * worst[1]:.2f}%)" + ("; rebinned" if self.rebinned else "")
                + "; time " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))


def _write_moments(con: duckdb.DuckDBPyConnection, names: ViewNames, merged: str) -> None:
    con.execute(f"DELETE FROM {names.q('__moments')} WHERE {REGION} IN (SELECT {REGION} FROM temp.{ident(merged)})")
    con.execute(f"INSERT INTO {names.q('__moments')} BY NAME SELECT * EXCLUDE ({OLD_REGION}) FROM temp.{ident(merged)}")


def _write_points(con: duckdb.DuckDBPyConnection, names: ViewNames, merged: str, arrow: str) -> None:
    con.execute(f"DELETE FROM {names.q('__points')} WHERE {REGION} IN (SELECT {REGION} FROM temp.{ident(merged)})")
    con.execute(f"INSERT INTO {names.q('__points')} BY NAME SELECT * FROM {ident(arrow)}")


def refresh(con: duckdb.DuckDBPyConnection, name: str | Sequence[str], new_rows: object, *,
            batch_id: str | None = None, rebin: bool = False, max_update_share: float = 0.1) -> RefreshReport:
    """Fold ``new_rows`` into the materialised view ``name``; only regions they touch are re-solved.

    Parameters
    ----------
    name : str or tuple
        A view made by :func:`materialize` (in this database file, by any process).
    new_rows : source
        Table, file, glob, query, relation, pandas/polars DataFrame or pyarrow object with the
        view's input columns and types.
    batch_id : str, optional
        Name of the batch. A batch id, or content (row count + order-free hash of the rows),
        already folded in is refused, so a batch is never counted twice.
    rebin : bool
        Rebuild the binning (and every region) from all recorded sources plus ``new_rows``:
        the original source and each earlier batch are read again, so each must still be a
        readable table, file or query with the rows it had (their fingerprints are checked).
        Use it when drift is large or a new value is out of the fixed-point range.
    max_update_share : float
        A region whose new rows are at most this share of its rows is updated in closed form:
        weights scaled to the new count and one least-displacement affine map making the
        points' mean and covariance exactly the region's new ones (every degree <= 2 moment
        exact; degree 3-4 keep the earlier fit's shape). Other touched regions are re-solved
        from their stored moments. 0 re-solves every touched region.

    Returns
    -------
    RefreshReport
        Rows added, regions re-solved, drift (share of new rows beyond the binned range).

    New rows' moments (one SQL pass, stored binning) are added to the stored integer sums, which
    makes the result exactly what momentizing all rows at once gives; regions without new rows
    keep their points byte for byte. Everything is written in one transaction.
    """
    names = ViewNames.of(name)
    new_rows = drain_pending(con, new_rows)  # a reader holding con's open result is read first
    meta, plan, version = _open_view(con, names, batch_id, max_update_share)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    src = resolve(con, new_rows)
    try:
        check_types(src, plan)
        stats = batch_stats(con, src, plan)
        log = _check_new(con, names, batch_id, stats)
        if rebin and stats.n_rows:
            drift, by_col = _drift(plan, stats)
            timings["check"] = time.perf_counter() - t0
            return _rebin(con, names, meta, plan, src, source_record(new_rows, src), stats, batch_id, drift, by_col,
                          timings)

        def moments(n_regions: int) -> str:
            return pipeline.momentize(con, plan, src.sql, n_regions=n_regions)

        return _fold(con, names, plan, version, log, stats, source_record(new_rows, src), batch_id, max_update_share,
                     moments, lambda: _new_sample(con, plan, src), timings, t0)
    finally:
        src.close()


@dataclass(frozen=True)
class Batch:
    """New rows whose passes ran elsewhere (e.g. on Spark), as :func:`refresh_batch` folds them in.

    ``columns``: each input column's DuckDB type (checked against the view's); ``stats``: the
    batch pass (:func:`duckquash.views.storage.batch_stats_sql` run there); ``moments``: called
    once the checks pass, returns the batch's integer moment table under the view's plan, with
    the tiny regions' row lists (``ROWS_COL``) as ``plan.moment_sql(rows=True)`` gives them;
    ``sample``: called when regions are re-solved, returns sampled new rows (the view's input
    columns) to start the solver from. A batch cannot be rebinned (its rows are not readable here).
    """

    label: str
    columns: dict[str, str]
    stats: BatchStats
    moments: Callable[[], pa.Table]
    sample: Callable[[], pa.Table]


def refresh_batch(con: duckdb.DuckDBPyConnection, name: str | Sequence[str], batch: Batch, *,
                  batch_id: str | None = None, max_update_share: float = 0.1) -> RefreshReport:
    """:func:`refresh` with new rows momentized elsewhere (a :class:`Batch`); the same checks, the same
    merge and re-solve, the same result as when the rows are read here."""
    names = ViewNames.of(name)
    meta, plan, version = _open_view(con, names, batch_id, max_update_share)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    check_types(Source("", dict(batch.columns), batch.label), plan)
    log = _check_new(con, names, batch_id, batch.stats)

    def moments(n_regions: int) -> str:
        table = batch.moments()
        with registered(con, table, "batch") as view:
            check_moment_columns(con, plan, ident(view), f"the moment table of {batch.label}")
            return create_temp(con, f"SELECT * FROM {ident(view)}", "moments")

    def sample() -> pa.Table:
        rows = batch.sample()
        with registered(con, rows, "sample") as view:
            return _new_sample(con, plan, Source(ident(view), dict(batch.columns), batch.label))

    return _fold(con, names, plan, version, log, batch.stats, {"label": batch.label, "source": None}, batch_id,
                 max_update_share, moments, sample, timings, t0)


def _open_view(con: duckdb.DuckDBPyConnection, names: ViewNames, batch_id, max_update_share):
    """The checks both refresh entry points start with: no open transaction on ``con``, the view's
    stored meta and plan (with its version), valid options. Returns (meta, plan, version)."""
    refuse_open_transaction(con, "refresh()")
    meta = read_meta(con, names)
    plan, version = stored_plan(names, meta)
    _check_options(batch_id, max_update_share)
    return meta, plan, version


def _check_options(batch_id, max_update_share) -> None:
    if isinstance(max_update_share, bool) or not isinstance(max_update_share, (int, float)) \
            or not 0 <= max_update_share <= 1:
        raise InputError(f"max_update_share must be a number in [0, 1], got {max_update_share!r}")
    if batch_id is not None and (not isinstance(batch_id, str) or not batch_id):
        raise InputError(f"batch_id must be a non-empty string, got {batch_id!r}")


def _check_new(con: duckdb.DuckDBPyConnection, names: ViewNames, batch_id: str | None, stats: BatchStats) -> list:
    """Refuse a batch id or content already folded in; returns the batch log."""
    log = con.execute(f"SELECT batch_id, fingerprint FROM {names.q('__batches')} ORDER BY seq").fetchall()
    if batch_id is not None and batch_id in {b for b, _ in log}:
        raise InputError(f"batch {batch_id!r} was already folded into {names.label!r}; nothing changed")
    dup = [(i, b) for i, (b, f) in enumerate(log) if f == stats.fingerprint]
    if dup and stats.n_rows:
        seq, which = dup[0]
        name = f"batch {which!r}" if which is not None else f"batch #{seq} (no id)"
        raise InputError(f"these {stats.n_rows:,} rows were already folded into {names.label!r} "
                         f"(same content as {name}); nothing changed")
    return log


def _drift(plan: SquashPlan, stats: BatchStats) -> tuple[float, dict[str, float]]:
    drift = stats.n_outside / stats.n_rows if stats.n_rows else 0.0
    by_col = {c: (stats.outside[j] / stats.n_rows if stats.n_rows else 0.0)
              for j, c in enumerate(plan.binning.quantitative)}
    return drift, by_col


def _fold(con: duckdb.DuckDBPyConnection, names: ViewNames, plan: SquashPlan, version: int, log: list,
          stats: BatchStats, record: dict, batch_id: str | None, max_update_share: float,
          momentize: Callable[[int], str], new_sample: Callable[[], pa.Table], timings: dict[str, float],
          t0: float) -> RefreshReport:
    """Add a batch's moments (``momentize(n_regions)``: its integer moment TEMP table) to the stored sums,
    re-solve or update the touched regions, write everything in one transaction."""
    drift, by_col = _drift(plan, stats)
    timings["check"] = time.perf_counter() - t0
    total = int(con.execute(f"SELECT coalesce(sum({ident(N_COL)}), 0)::BIGINT FROM {names.q('__moments')}").fetchall()[0][0])
    if stats.n_rows == 0:
        return RefreshReport(names.label, batch_id, 0, total, 0, 0, 0, 0.0, by_col, False, timings)
    seq = len(log)
    bad = overflow_columns(plan, stats.minimum, stats.maximum)
    if bad:
        raise InputError(f"new values of {bad} lie so far outside the view's range that exact sums would "
                         "overflow; refresh with rebin=True (or materialize again); nothing changed")
    temps: list[str] = []
    try:
        t0 = time.perf_counter()
        stored = con.execute(f"SELECT count(*) FROM {names.q('__moments')}").fetchall()[0][0]
        new = momentize(max(int(stored), 1))
        temps.append(new)
        keys = list(plan.key_columns)
        old_sub = (f"(SELECT * FROM {names.q('__moments')} o WHERE EXISTS "
                   f"(SELECT 1 FROM temp.{ident(new)} n WHERE {key_match('o', 'n', keys)}))")
        summed = pipeline.merge(con, plan, [old_sub, f"temp.{ident(new)}"], rows=True)
        temps.append(summed)
        joined = create_temp(con, f"SELECT o.{REGION} AS {OLD_REGION}, m.* FROM temp.{ident(summed)} m "
                                  f"LEFT JOIN {names.q('__moments')} o ON {key_match('o', 'm', keys)}")
        temps.append(joined)
        top = con.execute(f"SELECT coalesce(max({REGION}), -1) FROM {names.q('__moments')}").fetchall()[0][0]
        order = f"{OLD_REGION} IS NOT NULL, {key_order(keys)}"
        merged = create_temp(con, f"SELECT coalesce({OLD_REGION}, {int(top)} + row_number() OVER (ORDER BY {order}))"
                                  f"::BIGINT AS {REGION}, * FROM temp.{ident(joined)}")
        temps.append(merged)
        n_new_regions = con.execute(f"SELECT count(*) FROM temp.{ident(merged)} "
                                    f"WHERE {OLD_REGION} IS NULL").fetchall()[0][0]
        timings["momentize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        moments = pipeline.read_moments(con, plan, f"temp.{ident(merged)}", rows=True, extra=[REGION, OLD_REGION])
        old_points = _old_points(con, names, merged)
        updated, n_updated = update_in_place(con, names, plan, moments, old_points, max_update_share)
        pieces = [updated]
        done = pa.table({REGION: pc.unique(updated.column(REGION))})
        if done.num_rows < moments.n_regions:  # the other touched regions: Generate from their moments
            with registered(con, done, "updated") as upd:
                rest = (f"(SELECT * FROM temp.{ident(merged)} m WHERE NOT EXISTS "
                        f"(SELECT 1 FROM {ident(upd)} u WHERE u.{REGION} = m.{REGION}))")
                out, _ = pipeline.run(con, plan, moments=rest, extra=[REGION],
                                      sample=_warm_starts(plan, new_sample(), old_points))
            ids = out.moments.table.column(REGION).to_numpy()[out.point_region]
            pieces.append(points_table(out.points, ids).cast(updated.schema))
        points = pa.concat_tables(pieces)
        timings["generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with registered(con, points) as arrow, Transaction(con):
            _write_moments(con, names, merged)
            _write_points(con, names, merged, arrow)
            log_batch(con, names, version, batch_row(seq, batch_id, stats.fingerprint, record, stats.n_rows,
                                                     stats.n_outside, moments.n_regions))
        timings["write"] = time.perf_counter() - t0
        n_points = con.execute(f"SELECT count(*) FROM {names.q('__points')}").fetchall()[0][0]
        return RefreshReport(names.label, batch_id, stats.n_rows, total + stats.n_rows, moments.n_regions,
                             int(n_new_regions), int(n_points), drift, by_col, False, timings, n_updated)
    finally:
        drop_temp(con, temps)




def _old_points(con: duckdb.DuckDBPyConnection, names: ViewNames, merged: str) -> pa.Table:
    """Current points of the regions being refreshed, region by region."""
    return con.sql(f"SELECT * FROM {names.q('__points')} WHERE {REGION} IN "
                   f"(SELECT {OLD_REGION} FROM temp.{ident(merged)}) ORDER BY {REGION}, rowid").to_arrow_table()


def _new_sample(con: duckdb.DuckDBPyConnection, plan: SquashPlan, src: Source) -> pa.Table:
    """Sampled new rows (the spec's sample of ``src``): categoricals and DOUBLE quantitative values."""
    quants = [f"{ident(c)}::DOUBLE AS {ident(c)}" for c in plan.binning.quantitative]
    return con.sql(f"SELECT {comma([ident(c) for c in plan.spec.categorical] + quants)} "
                   f"FROM ({sample_sql(src, plan.spec)})").to_arrow_table()


def _warm_starts(plan: SquashPlan, new: pa.Table, old: pa.Table) -> pa.Table:
    """Solver starts for the re-solved regions: their current points first, then sampled new rows.

    A region that gained a few rows has moments close to before, so its old points start the
    solver next to the new optimum and it stops after a few steps.
    """
    cols = list(plan.spec.categorical) + list(plan.binning.quantitative)
    old = old.select(cols)
    return pa.concat_tables([old, new.cast(old.schema)])


def _rebin(con: duckdb.DuckDBPyConnection, names: ViewNames, meta: dict, plan: SquashPlan, src: Source,
           record: dict, stats: BatchStats, batch_id: str | None, drift: float, by_col: dict[str, float],
           timings: dict[str, float]) -> RefreshReport:
    """Rebuild the whole view from every recorded source plus the new rows (new binning)."""
    rows = con.execute(f"SELECT {BATCH_COLUMNS} FROM {names.q('__batches')} ORDER BY seq").fetchall()
    if record["source"] is None:
        raise InputError("rebin=True needs the new rows as a table name, file path or query (it is recorded to be read again)")
    parts, opened = [], []
    cols = comma(ident(c) for c in plan.spec.columns)
    try:
        for r in rows:
            rec = json.loads(r[3])
            if rec.get("source") is None:
                raise InputError(f"cannot rebin {names.label!r}: batch {r[1]!r} came from {rec.get('label')} "
                                 "which cannot be read again; materialize the view again from all its data")
            try:
                s = resolve(con, rec["source"])
            except InputError as e:
                raise InputError(f"cannot rebin {names.label!r}: batch {r[1]!r} source is gone ({e})") from None
            opened.append(s)
            if r[2] is not None and fingerprint(con, s, plan.spec) != r[2]:
                raise InputError(f"cannot rebin {names.label!r}: the rows of batch {r[1]!r} ({rec.get('label')}) "
                                 "changed since they were folded in; materialize the view again")
            parts.append(f"SELECT {cols} FROM {s.sql}")
        parts.append(f"SELECT {cols} FROM {src.sql}")
        union = Source("(" + " UNION ALL ".join(parts) + ")", dict(plan.column_types), "all recorded sources")
        _, version = stored_plan(names, meta)
        new_rows = [list(r) for r in rows] + [batch_row(len(rows), batch_id, stats.fingerprint, record, stats.n_rows,
                                                        stats.n_outside, 0)]
        t0 = time.perf_counter()
        res = build(con, names, union, plan.spec, json.loads(meta["source"]), True, [tuple(r) for r in new_rows],
                    timings, version + 1)
        timings["rebuild"] = time.perf_counter() - t0
    finally:
        for s in opened:
            s.close()
    return RefreshReport(names.label, batch_id, stats.n_rows, res.n_rows, res.n_regions, res.n_regions,
                         res.n_points, drift, by_col, True, timings)
