"""Materialise a squashed view: run the one pipeline, then store points, moments and plan in one transaction."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Sequence

import duckdb

from ..ds import pipeline
from ..ds.plan import SquashPlan
from ..ds.spec import SquashSpec
from ..io.source import Source, drain_pending, resolve
from ..io.transaction import Transaction, refuse_open_transaction, drop_temp, registered
from ..sql.build import key_order
from ..sql.names import REGION
from ..sql.quote import comma, ident, qualified
from .storage import (FORMAT, ViewNames, batch_row, create_meta, drop_existing, fingerprint, points_table,
                      refuse_taken, source_record)


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

    def summary(self) -> str:
        """What the view holds and how long building it took (refresh it with ``duckquash.refresh``)."""
        lines = [f"materialised view {self.name!r}: {self.n_rows:,} rows -> {self.n_points:,} points "
                 f"in {self.n_regions:,} regions (reduction {self.n_rows / max(self.n_points, 1):,.1f}x)"]
        if self.plan is not None:
            sp = self.plan.spec
            lines.append(f"method {sp.method}; categorical {list(sp.categorical)}; quantitative {list(sp.quantitative)}; "
                         "moments kept as exact integer sums, so batches add in exactly")
        if self.timings:
            lines.append("time " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def build(con: duckdb.DuckDBPyConnection, names: ViewNames, src: Source, spec: SquashSpec, record: dict,
          replace: bool, batches: list | None = None, timings: dict | None = None, version: int = 0) -> ViewResult:
    """Squash ``src`` keeping its integer moments, then create the view's five objects in one transaction.

    Region ids are the regions' ranks in key order, the order Generate reads them in.
    ``batches``: the batch log to store (a rebuild keeps the old one); default: one initial batch.
    """
    timings = {} if timings is None else timings
    out, moments = pipeline.run(con, spec, source=src, keep_moments=True)
    try:
        timings.update(out.timings)
        if batches is None:
            t0 = time.perf_counter()
            batches = [batch_row(0, "initial", fingerprint(con, src, spec), record, out.n_rows, 0,
                                 out.moments.n_regions)]
            timings["momentize"] = timings.get("momentize", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        points = points_table(out.points, out.point_region)
        meta = {"format": FORMAT, "plan": out.plan.to_json(), "source": json.dumps(record), "version": str(version)}
        rank = f"(row_number() OVER (ORDER BY {key_order(out.plan.key_columns)}) - 1)::BIGINT"
        with registered(con, points) as arrow, Transaction(con):
            drop_existing(con, names, replace)
            con.execute(f"CREATE TABLE {names.q('__moments')} AS SELECT {rank} AS {REGION}, * "
                        f"FROM temp.{ident(moments)} ORDER BY {REGION}")
            con.execute(f"CREATE TABLE {names.q('__points')} AS SELECT * FROM {ident(arrow)}")
            out_cols = comma(ident(c) for c in out.points.column_names)
            con.execute(f"CREATE VIEW {names.view} AS SELECT {out_cols} FROM {names.q('__points')}")
            create_meta(con, names, meta, batches)
        timings["write"] = time.perf_counter() - t0
    finally:
        drop_temp(con, [moments])
    return ViewResult(con, names.label, out.n_rows, points.num_rows, out.moments.n_regions, timings, out.plan,
                      names.parts)


def materialize(con: duckdb.DuckDBPyConnection, name: str | Sequence[str], source: object, *,
                categorical: Sequence[str] | str = (), quantitative: Sequence[str] | str = (),
                method: str | None = None, alpha: float = 1.0, weight: str = "weight", seed: int = 0,
                bins: int | None = None, layers: int | None = None, replace: bool = False, size: int | None = None,
                **options) -> ViewResult:
    """Squash ``source`` into a view ``name`` that :func:`duckquash.refresh` can later extend with new rows.

    Arguments are those of :func:`duckquash.squash` (``source`` too: a name, path, glob, SELECT,
    pandas/polars DataFrame, pyarrow object or relation; the view stores the squashed rows, so an
    object need not outlive the call, but ``refresh(rebin=True)`` can re-read only names, paths and
    queries). Besides the squashed rows (``SELECT * FROM
    name``), the database keeps the per-region integer moments, the binning and the parameters
    (see ``storage.py``): all created in one transaction, so a failure leaves nothing behind.
    """
    spec = SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, size=size,
                      **options)
    names = ViewNames.of(name)
    source = drain_pending(con, source)  # a reader holding con's open result is read first
    refuse_open_transaction(con, "materialize()")
    if not replace:
        refuse_taken(con, names)
    src = resolve(con, source)
    try:
        src.check_columns(spec.columns, spec.quantitative)
        return build(con, names, src, spec, source_record(source, src), replace)
    finally:
        src.close()
