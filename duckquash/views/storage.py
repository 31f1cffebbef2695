"""How a materialised squashed view is stored: names, metadata, the batch log, batch statistics.

Stored schema for a view ``name`` (siblings share its schema; ``<name>__x`` below)::

    name             VIEW   the squashed rows: categoricals, quantitative (DOUBLE), weight
    name__points     TABLE  __dq_region BIGINT, then the same columns as ``name``
    name__moments    TABLE  __dq_region BIGINT, then the integer moment columns (see ds/plan.py)
    name__meta       TABLE  key VARCHAR, value VARCHAR: format, plan (JSON: spec, binning,
                            fixed-point range, column types), source (JSON), version
    name__batches    TABLE  seq, batch_id, fingerprint, source, n_rows, n_outside, n_regions, added_at

A later process opening the same database file needs nothing else to refresh the view.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ..ds.plan import SquashPlan
from ..ds.spec import SquashSpec
from ..errors import InputError, OutputExistsError
from ..io.source import Source, table_exists
from ..io.write import table_name
from ..sql.names import REGION, value_col
from ..sql.quote import comma, ident, literal, qualified

FORMAT = "duckquash-view-1"
SUFFIXES = ("__points", "__moments", "__meta", "__batches")
BATCH_COLUMNS = "seq, batch_id, fingerprint, source, n_rows, n_outside, n_regions, added_at"


@dataclass(frozen=True)
class ViewNames:
    """The view's name parts and its sibling tables' quoted names."""

    parts: tuple[str, ...]

    @classmethod
    def of(cls, name: str | Sequence[str]) -> ViewNames:
        return cls(table_name(name))

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


def read_meta(con: duckdb.DuckDBPyConnection, names: ViewNames) -> dict[str, str]:
    """The view's ``__meta`` rows as a dict; an error naming the view if it is not one."""
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
        names = ViewNames.of(name)
        return table_exists(con, names.sib("__meta")) and table_exists(con, names.sib("__moments"))
    except (InputError, duckdb.Error):
        return False


def stored_plan(names: ViewNames, meta: dict[str, str]) -> tuple[SquashPlan, int]:
    """The view's plan and version from its metadata; an error naming the view if they are damaged."""
    try:
        plan = SquashPlan.from_json(meta["plan"])
        version = int(meta["version"])
    except InputError as e:
        raise InputError(f"materialised view {names.label!r}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # JSON errors are ValueErrors
        raise InputError(f"materialised view {names.label!r}: its metadata ({names.label}__meta) is damaged "
                         f"({type(e).__name__}: {e}); materialize the view again") from None
    return plan, version


def view_plan(con: duckdb.DuckDBPyConnection, name: str | Sequence[str]) -> SquashPlan:
    """The stored plan of a materialised view: emit partition moment SQL with it (``plan.moment_sql``)."""
    names = ViewNames.of(name)
    return stored_plan(names, read_meta(con, names))[0].install(con)


def source_record(source: object, src: Source) -> dict:
    """How to read a source again for ``rebin=True``: only names, paths and queries can be re-read."""
    return {"label": src.label, "source": source if isinstance(source, str) else None}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def fingerprint(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec) -> str:
    """Row count plus an order-independent hash of the rows' input columns."""
    cols = comma(ident(c) for c in spec.columns)
    n, h = con.execute(f"SELECT count(*), sum(hash({cols}))::VARCHAR FROM {src.sql}").fetchall()[0]
    return f"{n}:{h}"


def points_table(data: pa.Table, regions: np.ndarray) -> pa.Table:
    """Squashed rows with their region id in front (the ``__points`` layout)."""
    return data.add_column(0, REGION, pa.array(regions.astype(np.int64)))


def refuse_taken(con: duckdb.DuckDBPyConnection, names: ViewNames) -> None:
    """Refuse (before any work) when the view or one of its siblings exists."""
    for p in [names.parts] + [names.sib(s) for s in SUFFIXES]:
        if table_exists(con, p, current=True):
            raise OutputExistsError(f"{'.'.join(p)!r} already exists; pass replace=True to rebuild the view")


def drop_existing(con: duckdb.DuckDBPyConnection, names: ViewNames, replace: bool) -> None:
    """Inside the transaction: drop an existing view of this name (replace=True) or refuse."""
    exists = [p for p in [names.parts] + [names.sib(s) for s in SUFFIXES] if table_exists(con, p, current=True)]
    if not exists:
        return
    if not replace:
        raise OutputExistsError(f"{'.'.join(exists[0])!r} already exists; pass replace=True to rebuild the view")
    if not table_exists(con, names.sib("__meta"), current=True):
        raise OutputExistsError(f"{names.label!r} exists and is not a materialised squashed view; not replaced")
    con.execute(f"DROP VIEW IF EXISTS {names.view}")
    for s in SUFFIXES:
        con.execute(f"DROP TABLE IF EXISTS {names.q(s)}")


def create_meta(con: duckdb.DuckDBPyConnection, names: ViewNames, meta: dict[str, str], batches: list) -> None:
    """Inside the transaction: the ``__meta`` and ``__batches`` tables with their rows."""
    con.execute(f"CREATE TABLE {names.q('__meta')} (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for k, v in meta.items():
        con.execute(f"INSERT INTO {names.q('__meta')} VALUES ({literal(k)}, {literal(v)})")
    con.execute(f"CREATE TABLE {names.q('__batches')} (seq INTEGER, batch_id VARCHAR, fingerprint VARCHAR, "
                "source VARCHAR, n_rows BIGINT, n_outside BIGINT, n_regions BIGINT, added_at TIMESTAMP)")
    for r in batches:
        con.execute(f"INSERT INTO {names.q('__batches')} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(r))


def log_batch(con: duckdb.DuckDBPyConnection, names: ViewNames, version: int, row: list) -> None:
    """Inside the transaction: append to the batch log and bump the version (refusing a concurrent change)."""
    current = con.execute(f"SELECT value FROM {names.q('__meta')} WHERE key = 'version'").fetchall()[0][0]
    if int(current) != version:
        raise InputError(f"{names.label!r} was refreshed by someone else meanwhile; nothing changed, try again")
    con.execute(f"INSERT INTO {names.q('__batches')} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    con.execute(f"UPDATE {names.q('__meta')} SET value = {literal(str(version + 1))} WHERE key = 'version'")


@dataclass(frozen=True)
class BatchStats:
    """One pass over new rows: count, content fingerprint, range, and rows beyond the binned range."""

    n_rows: int
    fingerprint: str
    minimum: tuple[float | None, ...]
    maximum: tuple[float | None, ...]
    outside: tuple[int, ...]  # rows outside the observed range, per quantitative column
    n_outside: int  # rows outside it in any column


def batch_stats(con: duckdb.DuckDBPyConnection, src: Source, plan: SquashPlan) -> BatchStats:
    """One pass: count, an order-free content hash, range, and rows beyond the observed range."""
    return stats_from_row(plan, con.execute(batch_stats_sql(plan, src.sql)).fetchall()[0])


def batch_stats_sql(plan: SquashPlan, from_sql: str) -> str:
    """The batch pass over the FROM item ``from_sql`` (DuckDB dialect; render it for another engine,
    whose ``hash`` then gives another, equally order-free fingerprint); one row for :func:`stats_from_row`."""
    b, q = plan.binning, len(plan.binning.quantitative)
    cols = [ident(c) for c in plan.spec.columns]
    vals = [f"{b.value_sql(j)} AS {value_col(j)}" for j in range(q)]
    aggs = ["count(*)", f"sum(hash({comma(cols)}))::VARCHAR"]
    outs = []
    for j in range(q):
        v = value_col(j)
        lo, hi = plan.observed.minimum[j], plan.observed.maximum[j]
        cond = "FALSE" if lo is None else f"({v} < {literal(float(lo))} OR {v} > {literal(float(hi))})"
        outs.append(cond)
        aggs += [f"min({v})", f"max({v})", f"count(*) FILTER (WHERE {cond})"]
    aggs.append(f"count(*) FILTER (WHERE {' OR '.join(outs) or 'FALSE'})")
    return f"SELECT {comma(aggs)} FROM (SELECT {comma(cols + vals)} FROM {from_sql}) AS __dq_batch"


def stats_from_row(plan: SquashPlan, row: Sequence, engine: str = "") -> BatchStats:
    """:class:`BatchStats` from the row of :func:`batch_stats_sql`; ``engine`` prefixes the fingerprint
    when another engine's hash made it (fingerprints of different engines never match)."""
    b, q = plan.binning, len(plan.binning.quantitative)
    n = int(row[0])
    rest = row[2:-1]
    mins = tuple(None if rest[3 * j] is None else float(rest[3 * j]) for j in range(q))
    maxs = tuple(None if rest[3 * j + 1] is None else float(rest[3 * j + 1]) for j in range(q))
    for j, c in enumerate(b.quantitative):
        for v in (mins[j], maxs[j]):
            if v is not None and not np.isfinite(v):
                raise InputError(f"quantitative column {c!r} of the new rows holds infinite values")
    fp = f"{n}:{row[1]}" if not engine else f"{engine}:{n}:{row[1]}"
    return BatchStats(n, fp, mins, maxs, tuple(int(rest[3 * j + 2]) for j in range(q)), int(row[-1]))


def check_types(src: Source, plan: SquashPlan) -> None:
    """New rows must have the view's input columns with the same types."""
    missing = [c for c, _ in plan.column_types if c not in src.columns]
    if missing:
        raise InputError(f"the new rows ({src.label}) lack column(s) {missing} of the view; they have {list(src.columns)}")
    wrong = {c: (src.columns[c], t) for c, t in plan.column_types if src.columns[c] != t}
    if wrong:
        detail = ", ".join(f"{c!r} is {got}, the view has {want}" for c, (got, want) in wrong.items())
        raise InputError(f"the new rows ({src.label}) have other column types: {detail}; cast them in a SELECT")


def batch_row(seq: int, batch_id, fp: str | None, record: dict, n_rows: int, n_outside: int, n_regions: int) -> list:
    """One ``__batches`` row (see :data:`BATCH_COLUMNS`)."""
    return [seq, batch_id, fp, json.dumps(record), n_rows, n_outside, n_regions, now()]
