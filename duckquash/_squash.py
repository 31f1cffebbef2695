"""The squash pipeline, Group -> Momentize -> Generate -> Write back, and its result object."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ._binning import Binning, fit_binning
from ._errors import InputError
from ._generate import exact_row_limit, generate
from ._moments import MomentTable, assign_regions, momentize
from ._progress import progress as progress_bar
from ._source import resolve
from ._spec import SquashSpec
from ._sql import qualified
from ._writeback import check_table_target, table_name, write_table


@dataclass(frozen=True)
class SquashReport:
    """How the squash went: parameters, seconds per stage, per-region fit diagnostics."""

    params: dict
    timings: dict[str, float]
    regions: pa.Table  # one row per region: keys, n_rows, n_points, n_vars, kind, residuals, restarts
    moments: MomentTable
    binning: Binning
    cpu_timings: dict[str, float] = field(default_factory=dict)  # process CPU seconds per stage

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
        m = int(np.sum(self.regions.column("n_points").to_numpy()))
        kinds = self.regions.column("kind").to_pylist()
        lines = [
            f"rows N        {n:,}",
            f"points M      {m:,}   (reduction {n / max(m, 1):,.1f}x)",
            f"regions R     {self.regions.num_rows:,}   ({kinds.count('fit')} fitted, "
            f"{kinds.count('rows')} kept row by row, {kinds.count('mean')} one point)",
            f"moment fit    max |deg<=2 error| {self.max_resid_deg2:.2e}, "
            f"worst RMS deg 3-4 error {self.worst_rms_resid_deg34:.2e}",
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

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        return self.con.sql(f"SELECT * FROM {qualified(self.parts or (self.table,))}")

    def summary(self) -> str:
        return f"squashed into {self.table!r}\n" + self.report.summary()


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


def squash_to_arrow(con: duckdb.DuckDBPyConnection, source: object, spec: SquashSpec,
                    show_progress: bool = False) -> tuple[pa.Table, SquashReport]:
    """Run Group, Momentize and Generate; nothing is written."""
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds (all threads): steadier than wall time on a shared machine
    src = resolve(con, source)
    try:
        src.check_columns(spec.columns, spec.quantitative)
        t0, c0 = time.perf_counter(), time.process_time()
        with progress_bar(con, "group", show_progress, scan_share=1 / 2):  # scan -> top-k -> result
            binning, extent, sample = fit_binning(con, src, spec)
        timings["group"] = time.perf_counter() - t0
        cpu["group"] = time.process_time() - c0
        refusal = predict_no_shrink(sample, spec.categorical, extent.n_rows)
        if refusal:
            raise InputError(f"squashing would not shrink {src.label}: {refusal}")
        fetch_rows = exact_row_limit(spec.alpha, len(spec.quantitative)) if spec.alpha > 0 else 0
        t0, c0 = time.perf_counter(), time.process_time()
        with progress_bar(con, "momentize", show_progress, scan_share=1 / 3):  # scan -> GROUP BY -> ORDER BY
            moments = momentize(con, src, binning, extent, spec.categorical, spec.degree, fetch_rows, sample)
        timings["momentize"] = time.perf_counter() - t0
        cpu["momentize"] = time.process_time() - c0
    finally:
        src.close()
    t0, c0 = time.perf_counter(), time.process_time()
    with progress_bar(None, "generate", show_progress):
        out = generate(moments, binning, spec, fetch_rows, assign_regions(con, binning, moments, sample))
    timings["generate"] = time.perf_counter() - t0
    cpu["generate"] = time.process_time() - c0
    n, m = extent.n_rows, out.table.num_rows
    if m >= n:
        levels = {c: len(set(moments.table.column(c).to_pylist())) for c in spec.categorical}
        raise InputError(
            f"squashing would not shrink {src.label}: {m:,} pseudo-points for {n:,} rows in "
            f"{moments.n_regions:,} regions (levels per categorical column: {levels}); "
            "drop or coarsen high-cardinality categorical columns, or lower alpha/bins")
    report = SquashReport(spec.as_dict(), timings, out.regions, moments, binning, cpu)
    return out.table, report


def squash(con: duckdb.DuckDBPyConnection, source: object, *, categorical: Sequence[str] | str = (),
           quantitative: Sequence[str] | str = (), method: str = "hyprect", alpha: float = 1.0,
           into: str | Sequence[str] | None = None, weight: str = "weight", seed: int = 0,
           replace: bool = False, bins: int = 3, layers: int = 3, progress: bool = False,
           **options) -> SquashResult:
    """Squash ``source`` into a small table of weighted pseudo-points in ``con``.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Connection holding (or able to read) the source; the output table is created here.
    source : str or DuckDBPyRelation
        Table or view name (TEMP too), Parquet/CSV path or glob, SELECT statement, or relation.
    categorical, quantitative : list of str
        Columns whose every value (NULL included) defines regions, and numeric columns
        summarised by moments. A NULL/NaN quantitative value forms its own region and stays NULL.
    method : {"hyprect", "datasphere", "lds"}
        Regions as quantile-bin hyperrectangles or Data Spheres (radius layers x pyramids); or
        likelihood-based squashing for a stated model (``formula=``, ``family=``, ``size=``,
        ``iterations=``, ``init=``, ``ds=``, ``df=``; see ``duckquash._lds.LdsSpec``).
    alpha : float
        ``M_r = max(1, ceil(alpha * log2 N_r))`` points per region; 0 gives region means.
    into : str or tuple, optional
        Output table (a tuple for a qualified name). Default: a generated name.
    weight : str
        Name of the weight column: frequency weights, summing to N_r per region and N overall.
    seed : int
        Seed for the binning sample and solver starts; same input and seed, same output.
    replace : bool
        Replace an existing output table; otherwise an existing name is an error.
    bins, layers : int
        Quantile bins per variable (HypRect) or radius layers (Data Spheres).
    progress : bool
        Show a progress bar on stderr for the SQL passes.
    **options
        Advanced: ``degree`` (2-4), ``exact_covariance``, ``sample_size``, ``restarts``, ``max_iter``.

    Returns
    -------
    SquashResult
        ``table``, ``relation``, ``n_rows``, ``n_points``, ``n_regions`` and ``report``.
    """
    if isinstance(method, str) and method.lower() == "lds":  # model-based: variables come from formula=
        from ._lds import lds_spec, squash_lds_to_arrow

        if categorical or quantitative:
            raise InputError("method='lds' takes its variables from formula=; drop categorical=/quantitative=")
        lspec = lds_spec(weight=weight, seed=seed, **options)
        run = lambda: squash_lds_to_arrow(con, source, lspec, progress)  # noqa: E731
    else:
        unknown = sorted(set(options) - {"degree", "exact_covariance", "sample_size", "restarts", "max_iter"})
        if unknown:
            raise InputError(f"unknown option(s) {unknown}")
        spec = SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, **options)
        run = lambda: squash_to_arrow(con, source, spec, progress)  # noqa: E731
    parts = table_name(into if into is not None else f"squashed_{uuid.uuid4().hex[:8]}")
    check_table_target(con, parts, replace)
    data, report = run()
    t0 = time.perf_counter()
    write_table(con, data, parts, replace)
    report.timings["write"] = time.perf_counter() - t0
    return SquashResult(con, ".".join(parts), report.n_rows, data.num_rows, report.n_regions, report, parts)
