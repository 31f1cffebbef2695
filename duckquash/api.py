"""The public entry points that choose between layers: ``squash`` (data squashing or LDS) and ``glm``
(a fit over rows, or the exact answer from a materialised view's stored moments).

Both sit above the layers they dispatch to, so neither ``ds`` nor ``lds`` knows about the
other, and ``model`` knows nothing of views.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import duckdb
import pyarrow as pa

from .ds import pipeline
from .ds.results import SquashResult, output_parts, write_result
from .ds.spec import SquashSpec
from .errors import InputError, NotFromMoments
from .io.source import resolve
from .lds.pipeline import squash_lds_to_arrow
from .lds.spec import LdsSpec, lds_spec
from .model import families as fam
from .model.irls import fit_source
from .model.results import COV_TYPES, GLMResults
from .views.from_moments import glm_from_moments
from .views.storage import is_view

DS_OPTIONS = ("degree", "exact_covariance", "sample_size", "max_iter")


def make_spec(method: str | None = None, *, categorical: Sequence[str] | str = (), quantitative: Sequence[str] | str = (),
              alpha: float = 1.0, bins: int | None = None, layers: int | None = None, weight: str = "weight", seed: int = 0,
              size: int | None = None, **options) -> SquashSpec | LdsSpec:
    """The validated spec for ``method``: a :class:`SquashSpec` (HypRect, Data Spheres) or an
    :class:`LdsSpec` (``method="lds"``: variables come from ``formula=``)."""
    if isinstance(method, str) and method.lower() == "lds":
        if categorical or quantitative:
            raise InputError("method='lds' takes its variables from formula=; drop categorical=/quantitative=")
        return lds_spec(weight=weight, seed=seed, **({} if size is None else {"size": size}), **options)
    unknown = sorted(set(options) - set(DS_OPTIONS))
    if unknown:
        raise InputError(f"unknown option(s) {unknown}")
    return SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, size=size,
                      **options)


def squash_to_arrow(con: duckdb.DuckDBPyConnection, source: object, spec: SquashSpec | LdsSpec,
                    show_progress: bool = False) -> tuple[pa.Table, Any]:
    """Run the squash ``spec`` asks for on ``source``; returns the points and the report, writes nothing."""
    if isinstance(spec, LdsSpec):
        return squash_lds_to_arrow(con, source, spec, show_progress)
    src = resolve(con, source)
    try:
        src.check_columns(spec.columns, spec.quantitative)
        out, _ = pipeline.run(con, spec, source=src, reusable=False, check_shrink=True,
                              show_progress=show_progress)
    finally:
        src.close()
    return out.points, out.report()


def squash(con: duckdb.DuckDBPyConnection, source: object, *, categorical: Sequence[str] | str = (),
           quantitative: Sequence[str] | str = (), method: str | None = None, size: int | None = None,
           alpha: float = 1.0, into: str | Sequence[str] | None = None, weight: str = "weight", seed: int = 0,
           replace: bool = False, bins: int | None = None, layers: int | None = None, progress: bool = False,
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
    method : {"adaptive", "hyprect", "datasphere", "lds"}, optional
        Regions as one k-d tree per categorical cell, as many leaves as the cell's rows fill
        (the default, unless ``bins`` or ``layers`` is given; see ``duckquash/ds/forest.py``); the paper's quantile-bin hyperrectangles
        (every cell x ``bins``^Q bins) or Data Spheres (radius layers x pyramids); or
        likelihood-based squashing for a stated model (``formula=``, ``family=``, ``size=``,
        ``iterations=``, ``init=``, ``ds=``, ``df=``; see ``duckquash.lds.spec.LdsSpec``).
    size : int, optional
        The number of pseudo-points wanted: regions and points per region are chosen so that M
        lands near it (adaptive: the trees' leaves, then alpha; other methods: alpha).
    alpha : float
        ``M_r = max(1, ceil(alpha * log2 N_r))`` points per region, raised to ``d_r + 1`` so the
        covariance of the ``d_r`` columns varying in the region is exact (adaptive regions: at most
        ``N_r / 5``); 0 gives region means.
    into : str or tuple, optional
        Output table (a tuple for a qualified name). Default: a generated name.
    weight : str
        Name of the weight column: frequency weights, summing to N_r per region and N overall.
    seed : int
        Seed for the binning sample and solver starts; same input and seed, same output.
    replace : bool
        Replace an existing output table; otherwise an existing name is an error.
    bins, layers : int, optional
        Quantile bins per variable (HypRect; giving ``bins`` selects it) or radius layers (Data
        Spheres; giving ``layers`` selects it); 3 when not given.
    progress : bool
        Show a progress bar on stderr for the SQL passes.
    **options
        Advanced: ``degree`` (2-4), ``exact_covariance``, ``sample_size``, ``max_iter`` (solver iterations).

    Returns
    -------
    SquashResult
        ``table``, ``relation``, ``n_rows``, ``n_points``, ``n_regions`` and ``report``.
    """
    spec = make_spec(method, categorical=categorical, quantitative=quantitative, alpha=alpha, bins=bins,
                     layers=layers, weight=weight, seed=seed, size=size, **options)
    parts = output_parts(con, into, replace, source)
    data, report = squash_to_arrow(con, source, spec, progress)
    return write_result(con, data, report, parts, replace, source)


def glm(con: duckdb.DuckDBPyConnection, source: Any, formula: str, family: str = "gaussian",
        weight: str | None = None, *, cov_type: str = "nonrobust", levels: Mapping[str, Any] | None = None,
        max_iter: int = 50, tol: float = 1e-8, per_cell: bool | None = None) -> GLMResults:
    """Fit a generalized linear model inside DuckDB, from a formula.

    Parameters
    ----------
    con : DuckDB connection.
    source : table or view name, Parquet/CSV path or glob, SELECT text, or relation.
    formula : patsy/formulaic formula, e.g. ``"y ~ x1 + C(a, Sum) + x1:x2"``.
    family : ``"gaussian"`` (identity), ``"binomial"`` (logit) or ``"poisson"`` (log).
    weight : column of frequency weights. When None and the source has a DOUBLE column named
        ``weight`` that the formula does not use (a squashed table), that column is used and the
        summary says so.
    cov_type : ``"nonrobust"``, ``"HC0"`` or ``"HC1"``.
    levels : names usable in the formula, e.g. ``{"lnames": [0, 1, 2]}``.
    per_cell : with categorical terms, each IRLS pass aggregates per cell of the categorical
        factors (one GROUP BY) and assembles X'WX in numpy, instead of one SQL sum per pair of
        design columns. None (default) chooses whichever is cheaper (duckquash/model/cells.py);
        True/False force it. The fits agree to rounding (1e-10 relative in the tests).

    A Gaussian fit (no weight, nonrobust) on a materialised view (:func:`duckquash.materialize`)
    whose formula needs only moments the view stores is answered exactly from them, without
    reading rows (:func:`duckquash.glm_from_moments`; the summary says so); other formulas fit
    the view's weighted points.

    Returns
    -------
    GLMResults

    Examples
    --------
    >>> import duckdb, duckquash
    >>> con = duckdb.connect()
    >>> _ = con.execute("CREATE TABLE t AS SELECT i::DOUBLE AS x, 2 * i + (i % 3) AS y FROM range(100) r(i)")
    >>> res = duckquash.glm(con, "t", "y ~ x")
    >>> [round(float(b), 3) for b in res.params]
    [0.98, 2.0]
    """
    family = fam.check_family(family)
    if cov_type not in COV_TYPES:
        raise InputError(f"cov_type must be one of {list(COV_TYPES)}, got {cov_type!r}")
    if family == "gaussian" and cov_type == "nonrobust" and weight is None and levels is None and is_view(con, source):
        try:
            return glm_from_moments(con, source, formula)
        except NotFromMoments:
            pass
    return fit_source(con, source, formula, family, weight, cov_type=cov_type, levels=levels, max_iter=max_iter,
                      tol=tol, per_cell=per_cell)
