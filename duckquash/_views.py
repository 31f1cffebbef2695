"""Materialised squashed views: stored moments, incremental refresh, exact linear models from moments.

Stored schema for a view ``name`` (siblings share its schema; ``<name>__x`` below)::

    name             VIEW   the squashed rows: categoricals, quantitative (DOUBLE), weight
    name__points     TABLE  __dq_region BIGINT, then the same columns as ``name``
    name__moments    TABLE  __dq_region BIGINT, then the integer moment columns (see _merge.py)
    name__meta       TABLE  key VARCHAR, value VARCHAR: format, plan (JSON: spec, binning,
                            fixed-point range, column types), source (JSON), version
    name__batches    TABLE  seq, batch_id, fingerprint, source, n_rows, n_outside, n_regions, added_at

A later process opening the same database file needs nothing else to refresh the view. Every
change (materialise, refresh) runs in one transaction: readers see the old view or the new one.
"""
from __future__ import annotations

import datetime
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ._binning import sample_sql
from ._errors import InputError, OutputExistsError
from ._merge import (SquashPlan, double_sql, generate_points, merge_sql, moment_table, overflow_columns,
                     plan_from_source)
from ._moments import N_COL, moment_col, moment_parts, region_bound
from ._source import Source, resolve, table_exists
from ._spec import SquashSpec
from ._sql import comma, ident, literal, qualified
from ._writeback import table_name

FORMAT = "duckquash-view-1"
REGION = "__dq_region"
_SUFFIXES = ("__points", "__moments", "__meta", "__batches")


# --------------------------------------------------------------------------- names and metadata

@dataclass(frozen=True)
class _Names:
    parts: tuple[str, ...]

    def sib(self, suffix: str) -> tuple[str, ...]:
        return self.parts[:-1] + (self.parts[-1] + suffix,)

    @property
    def view(self) -> str:
        return qualified(self.parts)

    def q(self, suffix: str) -> str:
        return qualified(self.sib(suffix))

    @property
    def label(self) -> str:
        return ".".join(self.parts)


def _meta(con: duckdb.DuckDBPyConnection, names: _Names) -> dict[str, str]:
    if not table_exists(con, names.sib("__meta")) or not table_exists(con, names.sib("__moments")):
        raise InputError(f"{names.label!r} is not a materialised squashed view (no table "
                         f"{'.'.join(names.sib('__meta'))!r}); create it with duckquash.materialize")
    meta = dict(con.execute(f"SELECT key, value FROM {names.q('__meta')}").fetchall())
    if meta.get("format") != FORMAT:
        raise InputError(f"{names.label!r}: unknown view format {meta.get('format')!r} (expected {FORMAT!r})")
    return meta


def is_view(con: duckdb.DuckDBPyConnection, name: object) -> bool:
    """Whether ``name`` (str or tuple) is a materialised squashed view in ``con``."""
    if not isinstance(name, (str, tuple)):
        return False
    try:
        names = _Names(table_name(name))
        return table_exists(con, names.sib("__meta")) and table_exists(con, names.sib("__moments"))
    except (InputError, duckdb.Error):
        return False


def view_plan(con: duckdb.DuckDBPyConnection, name: str | Sequence[str]) -> SquashPlan:
    """The stored plan of a materialised view: emit partition moment SQL with it (``plan.moment_sql``)."""
    return SquashPlan.from_json(_meta(con, _Names(table_name(name)))["plan"])


def _source_record(source: object, src: Source) -> dict:
    """How to read a source again for ``rebin=True``: only names, paths and queries can be re-read."""
    return {"label": src.label, "source": source if isinstance(source, str) else None}


# --------------------------------------------------------------------------- transactions

class _Transaction:
    """BEGIN ... COMMIT on ``con``, ROLLBACK on any error (so a failed change leaves nothing)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self):
        try:
            self.con.execute("BEGIN TRANSACTION")
        except duckdb.TransactionException as e:
            raise InputError(f"duckquash runs its own transaction; commit or roll back the open one first ({e})") from None
        return self.con

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.con.execute("COMMIT")
        else:
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass
        return False


def _register(con: duckdb.DuckDBPyConnection, data: pa.Table) -> str:
    view = f"__dq_arrow_{uuid.uuid4().hex[:12]}"
    con.register(view, data)
    return view


def _temp(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    name = f"__dq_tmp_{uuid.uuid4().hex[:12]}"
    con.execute(f"CREATE TEMP TABLE {ident(name)} AS {sql}")
    return name


def _moment_temp(con: duckdb.DuckDBPyConnection, plan: SquashPlan, from_sql: str, n_regions: int,
                 head: str = "SELECT * FROM") -> str:
    """A TEMP table of integer moments of ``from_sql``, in several passes split by region when
    ``n_regions`` would not fit the memory limit in one (see ``_moments.moment_parts``)."""
    parts = moment_parts(con, n_regions, len(plan.exps) + 2 * len(plan.binning.quantitative) + 1)
    name = _temp(con, f"{head} ({plan.moment_sql(from_sql, part=(0, parts))})")
    for k in range(1, parts):
        con.execute(f"INSERT INTO temp.{ident(name)} {head} ({plan.moment_sql(from_sql, part=(k, parts))})")
    return name


def _drop_temp(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    for n in names:
        try:
            con.execute(f"DROP TABLE IF EXISTS temp.{ident(n)}")
        except duckdb.Error:
            pass


# --------------------------------------------------------------------------- stats of a batch

@dataclass(frozen=True)
class _BatchStats:
    n_rows: int
    fingerprint: str
    minimum: tuple[float | None, ...]
    maximum: tuple[float | None, ...]
    outside: tuple[int, ...]  # rows outside the observed range, per quantitative column
    n_outside: int  # rows outside it in any column


def _batch_stats(con: duckdb.DuckDBPyConnection, src: Source, plan: SquashPlan) -> _BatchStats:
    """One pass: count, an order-free content hash, range, and rows beyond the observed range."""
    b, q = plan.binning, len(plan.binning.quantitative)
    cols = [ident(c) for c in plan.spec.columns]
    vals = [f"{b.value_sql(j)} AS __dq_v_{j}" for j in range(q)]
    aggs = ["count(*)", f"sum(hash({comma(cols)}))::VARCHAR"]
    outs = []
    for j in range(q):
        v = f"__dq_v_{j}"
        lo, hi = plan.observed.minimum[j], plan.observed.maximum[j]
        cond = "FALSE" if lo is None else f"({v} < {literal(float(lo))} OR {v} > {literal(float(hi))})"
        outs.append(cond)
        aggs += [f"min({v})", f"max({v})", f"count(*) FILTER (WHERE {cond})"]
    aggs.append(f"count(*) FILTER (WHERE {' OR '.join(outs) or 'FALSE'})")
    row = con.execute(f"SELECT {comma(aggs)} FROM (SELECT {comma(cols + vals)} FROM {src.sql})").fetchall()[0]
    n = int(row[0])
    rest = row[2:-1]
    mins = tuple(rest[3 * j] for j in range(q))
    maxs = tuple(rest[3 * j + 1] for j in range(q))
    for j, c in enumerate(b.quantitative):
        for v in (mins[j], maxs[j]):
            if v is not None and not np.isfinite(v):
                raise InputError(f"quantitative column {c!r} of the new rows holds infinite values")
    return _BatchStats(n, f"{n}:{row[1]}", mins, maxs, tuple(int(rest[3 * j + 2]) for j in range(q)), int(row[-1]))


def _check_types(src: Source, plan: SquashPlan) -> None:
    missing = [c for c, _ in plan.column_types if c not in src.columns]
    if missing:
        raise InputError(f"the new rows ({src.label}) lack column(s) {missing} of the view; they have {list(src.columns)}")
    wrong = {c: (src.columns[c], t) for c, t in plan.column_types if src.columns[c] != t}
    if wrong:
        detail = ", ".join(f"{c!r} is {got}, the view has {want}" for c, (got, want) in wrong.items())
        raise InputError(f"the new rows ({src.label}) have other column types: {detail}; cast them in a SELECT")


# --------------------------------------------------------------------------- materialise

@dataclass(frozen=True)
class ViewResult:
    """A materialised view: the squashed rows are ``SELECT * FROM name``."""

    con: duckdb.DuckDBPyConnection = field(repr=False)
    name: str
    n_rows: int
    n_points: int
    n_regions: int
    timings: dict = field(default_factory=dict)
    plan: SquashPlan | None = field(default=None, repr=False)
    parts: tuple[str, ...] = field(default=(), repr=False)

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        return self.con.sql(f"SELECT * FROM {qualified(self.parts or (self.name,))}")


def _points_table(data: pa.Table, regions: np.ndarray) -> pa.Table:
    return data.add_column(0, REGION, pa.array(regions.astype(np.int64)))


def _fingerprint(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec) -> str:
    cols = comma(ident(c) for c in spec.columns)
    n, h = con.execute(f"SELECT count(*), sum(hash({cols}))::VARCHAR FROM {src.sql}").fetchall()[0]
    return f"{n}:{h}"


def _build(con: duckdb.DuckDBPyConnection, names: _Names, src: Source, spec: SquashSpec, record: dict,
           replace: bool, batches: list[tuple] | None = None, timings: dict | None = None,
           version: int = 0) -> ViewResult:
    """Squash ``src`` with integer moments kept, then create the view's five objects in one transaction."""
    timings = {} if timings is None else timings
    temps: list[str] = []
    try:
        t0 = time.perf_counter()
        plan, sample = plan_from_source(con, src, spec)
        timings["group"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        bound = region_bound(plan.binning, sample, spec.categorical, plan.observed.n_rows)
        mom = _moment_temp(con, plan, src.sql, bound, f"SELECT NULL::BIGINT AS {REGION}, * FROM")
        temps.append(mom)
        con.execute(f"UPDATE temp.{ident(mom)} SET {REGION} = rowid")  # any unique id will do
        fingerprint = _fingerprint(con, src, spec) if batches is None else None
        timings["momentize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sql = double_sql(plan, f"temp.{ident(mom)}", extra=[REGION])
        moments = moment_table(plan, con.sql(sql).to_arrow_table(), sql)
        data, regions, idx = generate_points(con, plan, moments, sample)
        ids = moments.table.column(REGION).to_numpy()[idx]
        points = _points_table(data, ids)
        timings["generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        arrow = _register(con, points)
        try:
            with _Transaction(con):
                _drop_view(con, names, replace)
                con.execute(f"CREATE TABLE {names.q('__moments')} AS SELECT * FROM temp.{ident(mom)} ORDER BY {REGION}")
                con.execute(f"CREATE TABLE {names.q('__points')} AS SELECT * FROM {ident(arrow)}")
                out_cols = comma(ident(c) for c in data.column_names)
                con.execute(f"CREATE VIEW {names.view} AS SELECT {out_cols} FROM {names.q('__points')}")
                con.execute(f"CREATE TABLE {names.q('__meta')} (key VARCHAR PRIMARY KEY, value VARCHAR)")
                meta = {"format": FORMAT, "plan": plan.to_json(), "source": json.dumps(record), "version": str(version)}
                for k, v in meta.items():
                    con.execute(f"INSERT INTO {names.q('__meta')} VALUES ({literal(k)}, {literal(v)})")
                con.execute(f"CREATE TABLE {names.q('__batches')} (seq INTEGER, batch_id VARCHAR, fingerprint VARCHAR, "
                            "source VARCHAR, n_rows BIGINT, n_outside BIGINT, n_regions BIGINT, added_at TIMESTAMP)")
                rows = batches if batches is not None else [
                    (0, "initial", fingerprint, json.dumps(record), int(moments.counts().sum()), 0,
                     moments.n_regions, _now())]
                for r in rows:
                    con.execute(f"INSERT INTO {names.q('__batches')} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(r))
        finally:
            con.unregister(arrow)
        timings["write"] = time.perf_counter() - t0
    finally:
        _drop_temp(con, temps)
    n = int(moments.counts().sum())
    return ViewResult(con, names.label, n, points.num_rows, moments.n_regions, timings, plan, names.parts)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _drop_view(con: duckdb.DuckDBPyConnection, names: _Names, replace: bool) -> None:
    """Inside the transaction: drop an existing view of this name (replace=True) or refuse."""
    exists = [p for p in [names.parts] + [names.sib(s) for s in _SUFFIXES] if table_exists(con, p, current=True)]
    if not exists:
        return
    is_view = table_exists(con, names.sib("__meta"), current=True)
    if not replace:
        raise OutputExistsError(f"{'.'.join(exists[0])!r} already exists; pass replace=True to rebuild the view")
    if not is_view:
        raise OutputExistsError(f"{names.label!r} exists and is not a materialised squashed view; not replaced")
    con.execute(f"DROP VIEW IF EXISTS {names.view}")
    for s in _SUFFIXES:
        con.execute(f"DROP TABLE IF EXISTS {names.q(s)}")


def materialize(con: duckdb.DuckDBPyConnection, name: str | Sequence[str], source: object, *,
                categorical: Sequence[str] | str = (), quantitative: Sequence[str] | str = (),
                method: str = "hyprect", alpha: float = 1.0, weight: str = "weight", seed: int = 0,
                bins: int = 3, layers: int = 3, replace: bool = False, **options) -> ViewResult:
    """Squash ``source`` into a view ``name`` that :func:`refresh` can later extend with new rows.

    Arguments are those of :func:`duckquash.squash`. Besides the squashed rows (``SELECT * FROM
    name``), the database keeps the per-region integer moments, the binning and the parameters
    (module docstring): all created in one transaction, so a failure leaves nothing behind.
    """
    spec = SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, **options)
    names = _Names(table_name(name))
    if not replace:
        for p in [names.parts] + [names.sib(s) for s in _SUFFIXES]:
            if table_exists(con, p, current=True):
                raise OutputExistsError(f"{'.'.join(p)!r} already exists; pass replace=True to rebuild the view")
    src = resolve(con, source)
    try:
        src.check_columns(spec.columns, spec.quantitative)
        return _build(con, names, src, spec, _source_record(source, src), replace)
    finally:
        src.close()


# --------------------------------------------------------------------------- refresh

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


def _write_moments(con: duckdb.DuckDBPyConnection, names: _Names, merged: str) -> None:
    con.execute(f"DELETE FROM {names.q('__moments')} WHERE {REGION} IN (SELECT {REGION} FROM temp.{ident(merged)})")
    con.execute(f"INSERT INTO {names.q('__moments')} BY NAME SELECT * EXCLUDE (__dq_old) FROM temp.{ident(merged)}")


def _write_points(con: duckdb.DuckDBPyConnection, names: _Names, merged: str, arrow: str) -> None:
    con.execute(f"DELETE FROM {names.q('__points')} WHERE {REGION} IN (SELECT {REGION} FROM temp.{ident(merged)})")
    con.execute(f"INSERT INTO {names.q('__points')} BY NAME SELECT * FROM {ident(arrow)}")


def _log_batch(con: duckdb.DuckDBPyConnection, names: _Names, version: int, row: list) -> None:
    now = con.execute(f"SELECT value FROM {names.q('__meta')} WHERE key = 'version'").fetchall()[0][0]
    if int(now) != version:
        raise InputError(f"{names.label!r} was refreshed by someone else meanwhile; nothing changed, try again")
    con.execute(f"INSERT INTO {names.q('__batches')} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    con.execute(f"UPDATE {names.q('__meta')} SET value = {literal(str(version + 1))} WHERE key = 'version'")


def refresh(con: duckdb.DuckDBPyConnection, name: str | Sequence[str], new_rows: object, *,
            batch_id: str | None = None, rebin: bool = False, max_update_share: float = 0.1) -> RefreshReport:
    """Fold ``new_rows`` into the materialised view ``name``; only regions they touch are re-solved.

    Parameters
    ----------
    name : str or tuple
        A view made by :func:`materialize` (in this database file, by any process).
    new_rows : source
        Table, file, glob, query or relation with the view's input columns and types.
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
    names = _Names(table_name(name))
    meta = _meta(con, names)
    plan = SquashPlan.from_json(meta["plan"])
    version = int(meta["version"])
    if isinstance(max_update_share, bool) or not isinstance(max_update_share, (int, float)) \
            or not 0 <= max_update_share <= 1:
        raise InputError(f"max_update_share must be a number in [0, 1], got {max_update_share!r}")
    if batch_id is not None and (not isinstance(batch_id, str) or not batch_id):
        raise InputError(f"batch_id must be a non-empty string, got {batch_id!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    src = resolve(con, new_rows)
    temps: list[str] = []
    try:
        _check_types(src, plan)
        stats = _batch_stats(con, src, plan)
        log = con.execute(f"SELECT batch_id, fingerprint FROM {names.q('__batches')}").fetchall()
        if batch_id is not None and batch_id in {b for b, _ in log}:
            raise InputError(f"batch {batch_id!r} was already folded into {names.label!r}; nothing changed")
        dup = [b for b, f in log if f == stats.fingerprint]
        if dup and stats.n_rows:
            raise InputError(f"these {stats.n_rows:,} rows were already folded into {names.label!r} "
                             f"(same content as batch {dup[0]!r}); nothing changed")
        drift = stats.n_outside / stats.n_rows if stats.n_rows else 0.0
        by_col = {c: (stats.outside[j] / stats.n_rows if stats.n_rows else 0.0)
                  for j, c in enumerate(plan.binning.quantitative)}
        timings["check"] = time.perf_counter() - t0
        total = int(con.execute(f"SELECT coalesce(sum({ident(N_COL)}), 0)::BIGINT FROM {names.q('__moments')}").fetchall()[0][0])
        if stats.n_rows == 0:
            return RefreshReport(names.label, batch_id, 0, total, 0, 0, 0, 0.0, by_col, False, timings)
        record = _source_record(new_rows, src)
        seq = len(log)
        if rebin:
            return _rebin(con, names, meta, plan, src, record, stats, batch_id, log, drift, by_col, timings)
        bad = overflow_columns(plan, stats.minimum, stats.maximum)
        if bad:
            raise InputError(f"new values of {bad} lie so far outside the view's range that exact sums would "
                             "overflow; refresh with rebin=True (or materialize again); nothing changed")
        t0 = time.perf_counter()
        stored = con.execute(f"SELECT count(*) FROM {names.q('__moments')}").fetchall()[0][0]
        new = _moment_temp(con, plan, src.sql, max(int(stored), 1))
        temps.append(new)
        keys = list(plan.key_columns)
        match = " AND ".join(f"o.{ident(k)} IS NOT DISTINCT FROM n.{ident(k)}" for k in keys) or "TRUE"
        old_sub = f"(SELECT * FROM {names.q('__moments')} o WHERE EXISTS (SELECT 1 FROM temp.{ident(new)} n WHERE {match}))"
        merged_sql = merge_sql(plan, [old_sub, f"temp.{ident(new)}"])
        m_match = " AND ".join(f"o.{ident(k)} IS NOT DISTINCT FROM m.{ident(k)}" for k in keys) or "TRUE"
        joined = _temp(con, f"SELECT o.{REGION} AS __dq_old, m.* FROM ({merged_sql}) m "
                            f"LEFT JOIN {names.q('__moments')} o ON {m_match}")
        temps.append(joined)
        top = con.execute(f"SELECT coalesce(max({REGION}), -1) FROM {names.q('__moments')}").fetchall()[0][0]
        order = comma(["__dq_old IS NOT NULL"] + [ident(k) + " NULLS FIRST" for k in keys])
        merged = _temp(con, f"SELECT coalesce(__dq_old, {int(top)} + row_number() OVER (ORDER BY {order}))::BIGINT "
                            f"AS {REGION}, * FROM temp.{ident(joined)}")
        temps.append(merged)
        n_new_regions = con.execute(f"SELECT count(*) FROM temp.{ident(merged)} WHERE __dq_old IS NULL").fetchall()[0][0]
        timings["momentize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sql = double_sql(plan, f"temp.{ident(merged)}", extra=[REGION, "__dq_old"])
        moments = moment_table(plan, con.sql(sql).to_arrow_table(), sql)
        old_points = _old_points(con, names, plan, merged)
        updated, n_updated = _update_in_place(con, names, plan, moments, old_points, max_update_share)
        solve = np.flatnonzero(~np.isin(moments.table.column(REGION).to_numpy(), updated.column(REGION).to_numpy()))
        pieces = [updated]
        if solve.size:
            sub = moment_table(plan, moments.table.take(pa.array(solve)), sql)
            data, _, idx = generate_points(con, plan, sub, _warm_starts(con, plan, src, old_points))
            pieces.append(_points_table(data, sub.table.column(REGION).to_numpy()[idx]).cast(updated.schema))
        points = pa.concat_tables(pieces)
        timings["generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        arrow = _register(con, points)
        try:
            with _Transaction(con):
                _write_moments(con, names, merged)
                _write_points(con, names, merged, arrow)
                _log_batch(con, names, version, [seq, batch_id, stats.fingerprint, json.dumps(record), stats.n_rows,
                                                 stats.n_outside, moments.n_regions, _now()])
        finally:
            con.unregister(arrow)
        timings["write"] = time.perf_counter() - t0
        n_points = con.execute(f"SELECT count(*) FROM {names.q('__points')}").fetchall()[0][0]
        return RefreshReport(names.label, batch_id, stats.n_rows, total + stats.n_rows, moments.n_regions,
                             int(n_new_regions), int(n_points), drift, by_col, False, timings, n_updated)
    finally:
        _drop_temp(con, temps)
        src.close()


def _old_points(con: duckdb.DuckDBPyConnection, names: _Names, plan: SquashPlan, merged: str) -> pa.Table:
    """Current points of the regions being refreshed, region by region."""
    return con.sql(f"SELECT * FROM {names.q('__points')} WHERE {REGION} IN "
                   f"(SELECT __dq_old FROM temp.{ident(merged)}) ORDER BY {REGION}, rowid").to_arrow_table()


def _warm_starts(con: duckdb.DuckDBPyConnection, plan: SquashPlan, src: Source, old: pa.Table) -> pa.Table:
    """Solver starts for the re-solved regions: their current points first, then sampled new rows.

    A region that gained a few rows has moments close to before, so its old points start the
    solver next to the new optimum and it stops after a few steps.
    """
    cols = list(plan.spec.categorical) + list(plan.binning.quantitative)
    quants = [f"{ident(c)}::DOUBLE AS {ident(c)}" for c in plan.binning.quantitative]
    new = con.sql(f"SELECT {comma([ident(c) for c in plan.spec.categorical] + quants)} "
                  f"FROM ({sample_sql(src, plan.spec)})").to_arrow_table()
    old = old.select(cols)
    return pa.concat_tables([old, new.cast(old.schema)])


def _exact_inside_batch(y: np.ndarray, pi: np.ndarray, mean: np.ndarray, cov: np.ndarray, lo: np.ndarray,
                        hi: np.ndarray, rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Points (B, M, d) with weighted mean ``mean`` and covariance ``cov`` exactly, inside [lo, hi].

    Alternates the least-displacement affine map with clipping to the box (as the generator
    does), for a batch of regions at once. Returns the points and which regions succeeded.
    """
    span = np.maximum(hi - lo, 1e-300)[:, None, :]
    lo3, hi3 = lo[:, None, :], hi[:, None, :]
    vals, vecs = np.linalg.eigh(cov)
    half = (vecs * np.sqrt(np.maximum(vals, 0.0))[:, None, :]) @ vecs.transpose(0, 2, 1)
    done = np.zeros(len(y), dtype=bool)
    bad = np.zeros(len(y), dtype=bool)
    for _ in range(rounds):
        todo = ~done & ~bad
        if not todo.any():
            break
        yt, pt = y[todo], pi[todo]
        m = np.einsum("bi,bij->bj", pt, yt)
        dev = yt - m[:, None, :]
        c = np.einsum("bi,bij,bik->bjk", pt, dev, dev)
        cv = np.linalg.eigvalsh(c)
        degenerate = cv[:, 0] <= 1e-12 * np.maximum(np.einsum("bjj->b", c), 1e-300)
        h = half[todo]
        mv, mvec = np.linalg.eigh(h @ c @ h)
        inv_mid = (mvec / np.sqrt(np.maximum(mv, 1e-300))[:, None, :]) @ mvec.transpose(0, 2, 1)
        amap = h @ inv_mid @ h
        yn = mean[todo][:, None, :] + np.einsum("bjk,bik->bij", amap, dev)
        excess = np.max(np.maximum(yn - hi3[todo], lo3[todo] - yn) / span[todo], axis=(1, 2))
        fin = (excess <= 1e-9) & ~degenerate
        idx = np.flatnonzero(todo)
        y[idx] = np.clip(yn, lo3[todo], hi3[todo])  # final for the finished, the next start for the others
        done[idx[fin]] = True
        bad[idx[degenerate]] = True
    return y, done


def _update_in_place(con: duckdb.DuckDBPyConnection, names: _Names, plan: SquashPlan, moments, old: pa.Table,
                     max_share: float) -> tuple[pa.Table, int]:
    """Closed-form refresh of regions that gained few rows: keep their points' shape.

    For a region whose new rows are at most ``max_share`` of its rows, the weights are scaled to
    the new count and one affine map (the least displacement) makes the points' weighted mean and
    covariance equal the region's new ones exactly, so every degree <= 2 moment stays exact;
    higher moments keep the old fit's shape. Regions where this is not possible (too few points
    for the covariance, a variable that stops being constant, a point leaving the region's range)
    are re-solved instead. Returns the updated points (with ``__dq_region``) and their count.
    """
    empty = old.slice(0, 0)
    tbl = moments.table
    if max_share <= 0 or old.num_rows == 0:
        return empty, 0
    q = len(plan.binning.quantitative)
    n = tbl.column(N_COL).to_numpy().astype(float)
    old_id = tbl.column("__dq_old").to_pandas().to_numpy(dtype=float, na_value=np.nan)
    n_old = dict(con.execute(f"SELECT {REGION}, {ident(N_COL)} FROM {names.q('__moments')} WHERE {REGION} IN "
                             f"(SELECT unnest({literal([int(v) for v in old_id[~np.isnan(old_id)]])}))").fetchall())
    reg_old = old.column(REGION).to_numpy()
    starts = np.searchsorted(reg_old, np.unique(reg_old))
    bounds = dict(zip(np.unique(reg_old).tolist(), zip(starts, list(starts[1:]) + [len(reg_old)])))
    center, scale = np.array(plan.binning.center), np.array(plan.binning.scale)
    xs = np.column_stack([old.column(c).to_numpy(zero_copy_only=False).astype(float)
                          for c in plan.binning.quantitative]) if q else np.empty((old.num_rows, 0))
    w_all = old.column(plan.spec.weight).to_numpy()
    col = lambda name: tbl.column(name).to_numpy(zero_copy_only=False).astype(float)  # noqa: E731
    from ._moments import max_col, min_col
    lo = np.column_stack([col(min_col(j)) for j in range(q)]) if q else np.empty((len(n), 0))
    hi = np.column_stack([col(max_col(j)) for j in range(q)]) if q else np.empty((len(n), 0))
    s1 = {j: np.nan_to_num(col(moment_col(tuple(int(i == j) for i in range(q))))) for j in range(q)}
    s2 = {(j, k): np.nan_to_num(col(moment_col(tuple(int(i == j) + int(i == k) for i in range(q)))))
          for j in range(q) for k in range(q)}
    keep_rows, new_x, new_w = [], [], []
    cands: dict[tuple, list] = {}  # (points, active variables) -> [(rows a:b, y, pi, n, mean, cov, lo, hi)]
    for r in range(len(n)):
        if np.isnan(old_id[r]) or int(old_id[r]) not in bounds:
            continue
        prev = n_old.get(int(old_id[r]))
        if prev is None or n[r] <= plan.fetch_rows or (n[r] - prev) > max_share * n[r]:
            continue
        a, b = bounds[int(old_id[r])]
        y, w = xs[a:b].copy(), w_all[a:b]
        present = ~np.isnan(lo[r])
        if np.any(np.isnan(y[:, present])) or np.any(~np.isnan(y[:, ~present])):
            continue
        act = np.flatnonzero(present & (hi[r] > lo[r]))
        const = np.flatnonzero(present & (hi[r] <= lo[r]))
        y[:, const] = lo[r][const]
        if len(y) <= act.size:
            continue
        mz = np.array([s1[j][r] / n[r] for j in act])
        ez = np.array([[s2[(j, k)][r] / n[r] for k in act] for j in act]).reshape(act.size, act.size)
        cov_new = (ez - np.outer(mz, mz)) * np.outer(scale[act], scale[act])
        cands.setdefault((b - a, tuple(act)), []).append(
            (a, b, y, w / w.sum(), n[r], center[act] + scale[act] * mz, cov_new, lo[r][act], hi[r][act]))
    keep_rows, new_x, new_w = [], [], []
    for (m, act), items in cands.items():
        act = list(act)
        pi = np.array([it[3] for it in items])
        ys = np.array([it[2] for it in items])
        ok = np.ones(len(items), dtype=bool)
        if act:
            ya, ok = _exact_inside_batch(ys[:, :, act], pi, np.array([it[5] for it in items]),
                                         np.array([it[6] for it in items]), np.array([it[7] for it in items]),
                                         np.array([it[8] for it in items]))
            ys[:, :, act] = ya
        for k in np.flatnonzero(ok):
            a, b = items[k][0], items[k][1]
            keep_rows.append(np.arange(a, b))
            new_x.append(ys[k])
            new_w.append(pi[k] * items[k][4])
    if not keep_rows:
        return empty, 0
    idx = np.concatenate(keep_rows)
    out = old.take(pa.array(idx))
    x = np.concatenate(new_x)
    for j, c in enumerate(plan.binning.quantitative):
        out = out.set_column(out.column_names.index(c), c, pa.array(x[:, j], mask=np.isnan(x[:, j])))
    out = out.set_column(out.column_names.index(plan.spec.weight), plan.spec.weight, pa.array(np.concatenate(new_w)))
    # the region id of a refreshed region stays the same (old id == new id for regions that existed)
    return out, len(keep_rows)


def _rebin(con, names: _Names, meta: dict, plan: SquashPlan, src: Source, record: dict, stats: _BatchStats,
           batch_id, log, drift, by_col, timings) -> RefreshReport:
    """Rebuild the whole view from every recorded source plus the new rows (new binning)."""
    rows = con.execute(f"SELECT seq, batch_id, fingerprint, source, n_rows, n_outside, n_regions, added_at "
                       f"FROM {names.q('__batches')} ORDER BY seq").fetchall()
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
            if r[2] is not None and _fingerprint(con, s, plan.spec) != r[2]:
                raise InputError(f"cannot rebin {names.label!r}: the rows of batch {r[1]!r} ({rec.get('label')}) "
                                 "changed since they were folded in; materialize the view again")
            parts.append(f"SELECT {cols} FROM {s.sql}")
        parts.append(f"SELECT {cols} FROM {src.sql}")
        union = Source("(" + " UNION ALL ".join(parts) + ")", dict(plan.column_types), "all recorded sources")
        version = int(meta["version"])
        new_rows = [list(r) for r in rows] + [[len(rows), batch_id, stats.fingerprint, json.dumps(record), stats.n_rows,
                                               stats.n_outside, 0, _now()]]
        t0 = time.perf_counter()
        res = _build(con, names, union, plan.spec, json.loads(meta["source"]), True, [tuple(r) for r in new_rows],
                     timings, version + 1)
        timings["rebuild"] = time.perf_counter() - t0
    finally:
        for s in opened:
            s.close()
    return RefreshReport(names.label, batch_id, stats.n_rows, res.n_rows, res.n_regions, res.n_regions,
                         res.n_points, drift, by_col, True, timings)


# --------------------------------------------------------------------------- SQL entry point

_REFRESH_UDF = "__dq_refresh_view"


def install_sql(con: duckdb.DuckDBPyConnection, owner_ref) -> str:
    """Register ``squash_refresh(name, src, batch_id := NULL, rebin := false)`` on ``con``; returns the UDF name.

    The refresh runs on a cursor in its own transaction and is committed when the CALL returns,
    so the caller's next statement sees the new view (the caller must not hold an open
    transaction that touched the view's tables). The UDF is volatile: it runs once per CALL.
    """
    from importlib import resources

    from duckdb.sqltypes import BOOLEAN, VARCHAR

    def run(name: str, src: str, batch_id: str | None, rebin: bool | None) -> str:
        owner = owner_ref()
        if owner is None:
            raise RuntimeError("the connection that installed squash_refresh() is closed")
        if name is None or src is None:
            raise InputError("squash_refresh needs a view name and a source of new rows")
        cur = owner.cursor()
        try:
            rep = refresh(cur, name, src, batch_id=batch_id, rebin=bool(rebin))
        finally:
            cur.close()
        return json.dumps({"name": rep.name, "batch_id": rep.batch_id, "n_new_rows": rep.n_new_rows,
                           "n_rows": rep.n_rows, "n_changed_regions": rep.n_changed_regions,
                           "n_points": rep.n_points, "drift": rep.drift, "summary": rep.summary()})

    con.create_function(_REFRESH_UDF, run, [VARCHAR, VARCHAR, VARCHAR, BOOLEAN], VARCHAR,
                        null_handling="special", side_effects=True)
    text = resources.files("duckquash.sql").joinpath("views.sql").read_text(encoding="utf-8")
    con.execute(text.replace("{udf}", _REFRESH_UDF))
    return _REFRESH_UDF


# --------------------------------------------------------------------------- exact linear models from moments

class NotFromMoments(InputError):
    """The model needs more than the stored moments hold (the caller can fit the squashed rows instead)."""


def _probe_points(q: int, n: int) -> np.ndarray:
    """Fixed, well-spread standardised probe points (deterministic)."""
    return np.random.default_rng(20240601).normal(0.0, 1.5, size=(n, q))


def glm_from_moments(con: duckdb.DuckDBPyConnection, name: str | Sequence[str], formula: str, *,
                     levels: dict | None = None):
    """Fit a Gaussian linear model on all rows folded into view ``name`` exactly, from its stored moments.

    Every design column (and the response) must be, within each combination of the categorical
    columns it uses, a polynomial of degree <= ``degree // 2`` (2 by default) in the quantitative
    columns: then X'X, X'y and y'y are sums of stored region moments, and the fit equals the fit
    on the original rows (to rounding) without reading them. The check is numerical: each column
    is evaluated on probe points and must be reproduced by a polynomial to 1e-9.

    Raises
    ------
    NotFromMoments
        When the formula uses a column the view does not hold, a non-polynomial term or too high
        a degree; fit the squashed rows with :func:`duckquash.glm` instead.

    Returns
    -------
    GLMResults
        ``weight_note`` says the fit was answered from the moments; ``n_passes`` is 0.
    """
    from ._formula import build_design
    from ._glm import GLMResults, _inverse, _scaled_factor, _solve
    from ._families import gaussian_llf
    from ._moments import exponents as _exps

    names = _Names(table_name(name))
    plan = SquashPlan.from_json(_meta(con, names)["plan"])
    spec, binning = plan.spec, plan.binning
    design = build_design(con, names.view, formula, levels=levels)
    if design.response is None:
        raise InputError("the formula needs a response: 'y ~ ...'")
    used = set(design.variables)
    outside = sorted(used - set(spec.columns))
    if outside:
        raise NotFromMoments(f"the view {names.label!r} holds no moments of {outside}")
    cats = [c for c in spec.categorical if c in used]
    quant = list(binning.quantitative)
    qused = [j for j, c in enumerate(quant) if c in used]
    q = len(quant)
    half = spec.degree // 2
    basis = [(0,) * q] + [e for e in _exps(q, half) if all(e[j] == 0 for j in range(q) if j not in qused)]
    # regions whose rows are complete in the used variables, summed per combination of the used categoricals
    complete = []
    for j in qused:
        if binning.method == "hyprect":
            complete.append(f"__dq_bin_{j} IS NOT NULL")
        else:
            complete.append(f"(__dq_miss & {1 << j}) = 0")
    complete += [f"{ident(c)} IS NOT NULL" for c in cats]
    need = sorted({tuple(a + b for a, b in zip(e1, e2)) for e1 in basis for e2 in basis} - {(0,) * q})
    dbl = double_sql(plan, names.q("__moments"), rows=False)
    sums = comma([f"sum({ident(N_COL)})::DOUBLE AS n"] + [f"sum({ident(moment_col(e))}) AS {ident(moment_col(e))}"
                                                          for e in need])
    group = f" GROUP BY {comma(ident(c) for c in cats)} ORDER BY {comma(ident(c) + ' NULLS FIRST' for c in cats)}" if cats else ""
    where = " AND ".join(complete) or "TRUE"
    agg = con.execute(f"SELECT {comma([ident(c) for c in cats] + [sums])} FROM ({dbl}) WHERE {where}{group}").fetchall()
    if not agg:
        raise InputError(f"no complete rows for {formula!r} in {names.label!r}")
    # polynomial coefficients of every column, per combination, from probe evaluations
    n_probe = 3 * len(basis) + 8
    zp = _probe_points(q, n_probe)
    zp[:, [j for j in range(q) if j not in qused]] = 0.0
    xp = np.array(binning.center) + np.array(binning.scale) * zp
    mono = np.column_stack([np.prod(zp ** np.array(e), axis=1) for e in basis])
    combos = pa.table({c: pa.array([r[i] for r in agg for _ in range(n_probe)]) for i, c in enumerate(cats)}) \
        if cats else pa.table({"__dq_c": pa.array(np.zeros(n_probe))})
    combos = combos.append_column("__dq_i", pa.array(np.arange(n_probe * len(agg))))
    for j, c in enumerate(quant):
        combos = combos.append_column(c, pa.array(np.tile(xp[:, j], len(agg))))
    view = _register(con, combos)
    try:
        exprs = list(design.exprs) + [design.response]
        vals = con.execute(f"SELECT {comma(f'({e})::DOUBLE' for e in exprs)} FROM {ident(view)} "
                           "ORDER BY __dq_i").fetchnumpy()
    finally:
        con.unregister(view)
    labels = list(design.names) + [design.response_name or "response"]
    values = np.column_stack([np.asarray(vals[k], dtype=float) for k in vals]).reshape(len(agg), n_probe, len(exprs))
    coef = np.empty((len(agg), len(basis), len(exprs)))
    for c in range(len(agg)):
        sol, *_ = np.linalg.lstsq(mono, values[c], rcond=None)
        err = np.abs(mono @ sol - values[c]).max(axis=0)
        bad = [labels[k] for k in range(len(exprs))
               if not np.isfinite(err[k]) or err[k] > 1e-9 * (1.0 + np.abs(values[c][:, k]).max())]
        if bad:
            raise NotFromMoments(f"{bad} are not polynomials of degree <= {half} in the view's quantitative "
                                 f"columns (given its categorical columns): the moments of {names.label!r} "
                                 "cannot answer this formula exactly")
        coef[c] = sol
    # X'X, X'y, y'y: sum over combinations of A^T G A, G[k, l] = sum of z^(e_k + e_l)
    pos = {e: i for i, e in enumerate(need)}
    total = np.zeros((len(exprs), len(exprs)))
    nobs = 0.0
    for c, row in enumerate(agg):
        s = np.array(row[len(cats):], dtype=float)
        nobs += s[0]
        g = np.empty((len(basis), len(basis)))
        for k, ek in enumerate(basis):
            for m, em in enumerate(basis):
                e = tuple(a + b for a, b in zip(ek, em))
                g[k, m] = s[0] if not any(e) else s[1 + pos[e]]
        total += coef[c].T @ g @ coef[c]
    k = design.k
    A, b, yy = total[:k, :k], total[:k, k], total[k, k]
    cf, sc = _scaled_factor(A, design.names, check_rank=True)
    beta = _solve(cf, sc, b)
    rss = max(float(yy - 2 * beta @ b + beta @ A @ beta), 0.0)
    df_resid = nobs - k
    n_all = int(con.execute(f"SELECT coalesce(sum({ident(N_COL)}), 0) FROM {names.q('__moments')}").fetchall()[0][0])
    return GLMResults(family="gaussian", design=design, params=beta, normalized_cov_params=_inverse(cf, sc),
                      scale=rss / df_resid if df_resid > 0 else float("nan"),
                      llf=gaussian_llf(rss, nobs) if rss > 0 else float("inf"), deviance=rss, nobs=nobs,
                      n_rows=int(round(nobs)), n_dropped=n_all - int(round(nobs)), df_resid=float(df_resid),
                      df_model=float(k - 1), converged=True, n_iter=0,
                      weight_note=f"answered exactly from the stored moments of view {names.label!r}; "
                                  "no source rows read", n_passes=0)
