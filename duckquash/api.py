"""The public entry points that choose between layers: ``squash`` (data squashing or LDS) and ``glm``
(a fit over rows, or the exact answer from a materialised view's stored moments).

Both sit above the layers they dispatch to, so neither ``ds`` nor ``lds`` knows about the
other, and ``model`` knows nothing of views.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any, Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .ds import pipeline
from .ds.results import SquashResult, output_parts, write_result
from .ds.spec import SquashSpec
from .errors import InputError, NotFromMoments
from .io.source import Source, drain_pending, resolve
from .io.write import check_file_target, file_target, same_file, write_file
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
    src = resolve(con, source)
    try:
        if isinstance(spec, LdsSpec):
            data, report = squash_lds_to_arrow(con, src, spec, show_progress)
            return input_layout(data, src, spec.formula.split("~")[0].strip()), report
        src.check_columns(spec.columns, spec.quantitative)
        out, _ = pipeline.run(con, spec, source=src, reusable=False, check_shrink=True,
                              show_progress=show_progress)
    finally:
        src.close()
    return out.points, out.report()


_INTEGER = {"TINYINT": pa.int8(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(), "BIGINT": pa.int64(),
            "UTINYINT": pa.uint8(), "USMALLINT": pa.uint16(), "UINTEGER": pa.uint32(), "UBIGINT": pa.uint64()}


def input_layout(data: pa.Table, src: Source, response: str) -> pa.Table:
    """LDS points in the input's column order (the weight last) with the response in its input type
    when every value fits it exactly (a 0/1 response stays INTEGER or BOOLEAN; a Gaussian or Poisson
    response whose pseudo-points are cluster means stays DOUBLE)."""
    order = {c: k for k, c in enumerate(src.columns)}
    names = sorted(data.column_names, key=lambda c: (c not in order, order.get(c, 0)))
    data = data.select(names)
    kind = src.columns.get(response, "").upper()
    if response in data.column_names and (kind in _INTEGER or kind == "BOOLEAN"):
        col = data.column(response)
        v = col.to_numpy(zero_copy_only=False).astype(float)
        ok = np.all(np.isnan(v) | (v == np.round(v)))
        if kind == "BOOLEAN":
            ok = ok and np.all(np.isnan(v) | (v == 0) | (v == 1))
        if ok:
            target = pa.bool_() if kind == "BOOLEAN" else _INTEGER[kind]
            data = data.set_column(data.column_names.index(response), response, pc.cast(col, target, safe=False))
    return data


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
    source : str, data object or DuckDBPyRelation
        Table or view name (TEMP too), Parquet/CSV path or glob, one read-only SELECT, a table
        function such as ``"read_parquet('parts/*.parquet')"``, a pandas or polars DataFrame
        (or LazyFrame), a pyarrow Table, RecordBatchReader or Dataset, or a DuckDB relation (see
        :func:`duckquash.io.source.resolve`). A RecordBatchReader is read once into a TEMP table
        (the squash reads its source several times) and dropped at the end. A string is never
        read as a Python variable's name: pass the DataFrame ``df``, not ``"df"``.
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
    into : str, tuple or path, optional
        Output table (a tuple for a qualified name), or a file: a str or ``os.PathLike`` ending in
        ``.parquet``/``.pq``/``.csv`` is written as that file, atomically (to a temporary file
        beside it, then renamed into place, as the command line's ``-o``); a table whose name ends
        so is given quoted (``'"out.csv"'``) or as a tuple. Default: a TEMP table
        ``temp.squashed_<hex>``, private to ``con`` and dropped when it closes, so nothing
        accumulates in a database file; pass ``into`` to keep the result.
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
        ``table`` (the table's name, or the file's path), ``relation``, ``n_rows``, ``n_points``,
        ``n_regions`` and ``report``.
    """
    spec = make_spec(method, categorical=categorical, quantitative=quantitative, alpha=alpha, bins=bins,
                     layers=layers, weight=weight, seed=seed, size=size, **options)
    source = drain_pending(con, source)  # a reader holding con's open result is read first
    path = file_target(into)
    if path is not None:
        check_output_file(source, path, replace)
        data, report = squash_to_arrow(con, source, spec, progress)
        t0 = time.perf_counter()
        write_file(con, data, path, replace)
        report.timings["write"] = time.perf_counter() - t0
        return SquashResult(con, path, report.n_rows, data.num_rows, report.n_regions, report, (), source,
                            os.path.abspath(path))
    parts = output_parts(con, into if into is not None else default_into("squashed"), replace, source)
    data, report = squash_to_arrow(con, source, spec, progress)
    return write_result(con, data, report, parts, replace, source)


def default_into(prefix: str) -> tuple[str, str]:
    """A fresh TEMP table name, ``temp.<prefix>_<hex>``: nothing permanent is left in a database file."""
    return ("temp", f"{prefix}_{uuid.uuid4().hex[:8]}")


def check_output_file(source: object, path: str, replace: bool) -> None:
    """Refuse a file output that is the input file itself, or that cannot be written (before any work)."""
    if same_file(source, path):
        raise InputError(f"the output {path!r} is the input file itself; write the result elsewhere")
    check_file_target(path, replace)


def glm(con: duckdb.DuckDBPyConnection, source: Any, formula: str, family: str = "gaussian",
        weight: str | None = None, *, cov_type: str = "nonrobust", levels: Mapping[str, Any] | None = None,
        max_iter: int = 50, tol: float = 1e-8, per_cell: bool | None = None) -> GLMResults:
    """Fit a generalized linear model inside DuckDB, from a formula.

    Parameters
    ----------
    con : DuckDB connection.
    source : table or view name, Parquet/CSV path or glob, one SELECT, a pandas/polars DataFrame,
        a pyarrow Table/RecordBatchReader/Dataset, or a relation (anything :func:`squash` takes).
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
        ``params``, ``bse``, ``tvalues``, ``pvalues`` are pandas Series indexed by the design
        column names (``res.params["x"]``; ``.to_numpy()`` for the array), ``conf_int()`` and
        ``cov_params()`` DataFrames, as statsmodels' formula models return them.

    Examples
    --------
    >>> import duckdb, duckquash
    >>> con = duckdb.connect()
    >>> _ = con.execute("CREATE TABLE t AS SELECT i::DOUBLE AS x, 2 * i + (i % 3) AS y FROM range(100) r(i)")
    >>> res = duckquash.glm(con, "t", "y ~ x")
    >>> res.params.round(3).to_dict()
    {'Intercept': 0.98, 'x': 2.0}
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
