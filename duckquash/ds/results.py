"""What a squash returns: the squashed table's handle and the report of how it went."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..io.source import resolve
from ..io.write import check_table_target, output_from_sql, refuse_replacing_source, table_name, write_table
from .binning import Binning
from .moments import MomentTable
from .plan import SquashPlan
from .verify import Verification, verify


@dataclass(frozen=True)
class SquashReport:
    """How the squash went: parameters, seconds per stage, per-region fit diagnostics."""

    params: dict
    timings: dict[str, float]
    regions: pa.Table  # one row per region: keys, n_rows, n_points, n_vars, kind, residuals
    moments: MomentTable
    binning: Binning
    cpu_timings: dict[str, float] = field(default_factory=dict)  # process CPU seconds per stage
    plan: SquashPlan | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return int(np.sum(self.regions.column("n_rows").to_numpy()))

    @property
    def n_regions(self) -> int:
        return self.regions.num_rows

    @property
    def max_resid_deg2(self) -> float:
        """Largest absolute error of a degree <= 2 moment (local standardised units) over regions."""
        return float(np.max(self.regions.column("max_resid_deg2").to_numpy(), initial=0.0))

    @property
    def worst_rms_resid_deg34(self) -> float:
        return float(np.max(self.regions.column("rms_resid_deg34").to_numpy(), initial=0.0))

    def summary(self) -> str:
        n = int(np.sum(self.regions.column("n_rows").to_numpy()))
        pts = self.regions.column("n_points").to_numpy()
        m = int(np.sum(pts))
        kinds = self.regions.column("kind").to_pylist()
        d = self.regions.column("n_vars").to_numpy()
        short = int(np.sum((pts < d + 1) & (np.array(kinds) == "fit")))
        degrees = [sum(e) for e in (self.plan.exps if self.plan is not None else self.moments.exps)]
        q = len(self.binning.quantitative)
        summed = ", ".join(f"{degrees.count(k):,} of degree {k}" for k in sorted(set(degrees)) if k > 2)
        rms = self.regions.column("rms_resid_deg34").to_numpy()
        fitted = rms[np.array(kinds) == "fit"]
        inexact = int(np.sum(self.regions.column("max_resid_deg2").to_numpy() > 1e-8))
        exact = ("count, means and covariances in every region" if not inexact else
                 f"WARNING: {inexact:,} regions miss their means or covariances (run verify())")
        lines = [
            f"rows N        {n:,}",
            f"points M      {m:,}   (reduction {n / max(m, 1):,.1f}x)",
            f"regions R     {self.regions.num_rows:,}   ({kinds.count('fit')} fitted, "
            f"{kinds.count('rows')} kept row by row, {kinds.count('mean')} one point)",
            f"exact         {exact}"
            + (f" (means and variances only in {short:,} regions with fewer points than columns + 1)" if short else "")
            + f"; largest degree<=2 error {self.max_resid_deg2:.1e} (region sd units)",
            f"degree 3-4    {summed or 'none summed'} (of {q} columns); RMS error of the fitted ones "
            f"(region sd units, 0 = exact): median {float(np.median(fitted)) if fitted.size else 0.0:.2f}, "
            f"worst {self.worst_rms_resid_deg34:.2f}",
            "time          " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class SquashResult:
    """A squashed table in ``con``: weights are frequency weights summing to N."""

    con: duckdb.DuckDBPyConnection = field(repr=False)
    table: str
    n_rows: int
    n_points: int
    n_regions: int
    report: SquashReport = field(repr=False)
    parts: tuple[str, ...] = field(repr=False, default=())
    source: object = field(repr=False, default=None)  # what was squashed (for verify)
    path: str | None = field(repr=False, default=None)  # into= a .parquet/.csv file: the file written

    @property
    def from_sql(self) -> str:
        """The squashed rows as a SQL FROM item: the table, or ``read_parquet``/``read_csv`` of the file."""
        return output_from_sql(self.parts or (self.table,), self.path)

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        return self.con.sql(f"SELECT * FROM {self.from_sql}")

    def verify(self, source: object = None) -> Verification:
        """Recompute every region's and categorical cell's count, means and covariances from the source
        in one SQL pass and compare them with the squashed table's (see ``duckquash/ds/verify.py``).

        ``source``: the rows that were squashed (default: what this squash read).
        """
        plan = getattr(self.report, "plan", None)
        if plan is None:
            raise InputError("verify() checks data squashing (HypRect, Data Spheres, adaptive), not LDS")
        src = resolve(self.con, self.source if source is None else source)
        try:
            return verify(self.con, plan, src, self.from_sql, plan.spec.weight)
        finally:
            src.close()

    def summary(self) -> str:
        return f"squashed into {'file' if self.path else 'table'} {self.table!r}\n" + self.report.summary()


def output_parts(con: duckdb.DuckDBPyConnection, into, replace: bool, source: object = None) -> tuple[str, ...]:
    """The output table's name parts (default: a fresh ``squashed_<hex>``), refused early if taken or
    if it is the input itself."""
    parts = table_name(into if into is not None else f"squashed_{uuid.uuid4().hex[:8]}")
    check_table_target(con, parts, replace)
    refuse_replacing_source(con, source, parts)
    return parts


def write_result(con: duckdb.DuckDBPyConnection, data: pa.Table, report, parts: tuple[str, ...],
                 replace: bool, source: object = None) -> SquashResult:
    """Write the squashed rows to table ``parts`` (whole or not at all) and describe the result.

    ``report``: a :class:`SquashReport` or an LDS report (anything with ``n_rows``,
    ``n_regions`` and ``timings``); its ``timings`` gain the write time.
    """
    t0 = time.perf_counter()
    write_table(con, data, parts, replace)
    report.timings["write"] = time.perf_counter() - t0
    return SquashResult(con, ".".join(parts), report.n_rows, data.num_rows, report.n_regions, report, parts,
                        source)
