"""Exact Gaussian linear models from a view's stored moments, without reading any rows.

Within each combination of the categorical columns a formula uses, every design column that is
a polynomial of degree <= 2 in the quantitative columns makes X'X, X'y and y'y sums of stored
region moments, so the fit equals the fit on the original rows (to rounding).
"""
from __future__ import annotations

from typing import Sequence

import itertools

import duckdb
import numpy as np
import pyarrow as pa

from ..ds.moments import exponents, reframe
from ..ds.plan import double_sql
from ..errors import InputError, NotFromMoments
from ..io.transaction import registered
from ..model.families import gaussian_llf
from ..model.formula import build_design
from ..model.linalg import inverse, scaled_factor, solve
from ..model.results import GLMResults
from ..sql.names import MISS, N_COL, bin_col, moment_col
from ..sql.quote import comma, ident
from .storage import ViewNames, read_meta, stored_plan


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
    names = ViewNames.of(name)
    plan, _ = stored_plan(names, read_meta(con, names))
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
    basis = [(0,) * q] + [e for e in exponents(q, half) if all(e[j] == 0 for j in range(q) if j not in qused)]
    # regions whose rows are complete in the used variables, their sums in globally standardised units,
    # summed per combination of the used categoricals
    complete = [f"{bin_col(j)} IS NOT NULL" if binning.method == "hyprect" else f"({MISS} & {1 << j}) = 0"
                for j in qused] + [f"{ident(c)} IS NOT NULL" for c in cats]
    need = sorted({tuple(a + b for a, b in zip(e1, e2)) for e1 in basis for e2 in basis} - {(0,) * q})
    have = set(plan.exps)
    lower = {k for e in need for k in itertools.product(*(range(p + 1) for p in e)) if any(k)}
    if not lower <= have:
        raise NotFromMoments(f"the view {names.label!r} did not sum every moment of degree <= {spec.degree} "
                             "(too many quantitative columns); fit the squashed rows instead")
    dbl = double_sql(plan, names.q("__moments"), rows=False)
    where = " AND ".join(complete) or "TRUE"
    keys = list(plan.key_columns)
    regions = con.sql(f"SELECT * FROM ({dbl}) WHERE {where}").to_arrow_table()
    if regions.num_rows == 0:
        raise InputError(f"no complete rows for {formula!r} in {names.label!r}")
    mid, half_w = binning.frames(regions.select(keys))
    shift = (mid - np.array(binning.center)) / np.array(binning.scale)
    stretch = half_w / np.array(binning.scale)
    col = lambda c: np.nan_to_num(regions.column(c).to_numpy(zero_copy_only=False).astype(float))  # noqa: E731
    counts = col(N_COL)
    glob = reframe({e: col(moment_col(e)) for e in sorted(lower)}, counts, shift, stretch, need)
    combo_of = _combinations(regions, cats)
    agg = []
    for c, (values, members) in enumerate(combo_of):
        agg.append(list(values) + [float(counts[members].sum())] + [float(glob[e][members].sum()) for e in need])
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
    with registered(con, combos, "probes") as view:
        exprs = list(design.exprs) + [design.response]
        vals = con.execute(f"SELECT {comma(f'({e})::DOUBLE' for e in exprs)} FROM {ident(view)} "
                           "ORDER BY __dq_i").fetchnumpy()
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
    cf, sc = scaled_factor(A, design.names, check_rank=True)
    beta = solve(cf, sc, b)
    rss = max(float(yy - 2 * beta @ b + beta @ A @ beta), 0.0)
    df_resid = nobs - k
    n_all = int(con.execute(f"SELECT coalesce(sum({ident(N_COL)}), 0) FROM {names.q('__moments')}").fetchall()[0][0])
    return GLMResults(family="gaussian", design=design, params=beta, normalized_cov_params=inverse(cf, sc),
                      scale=rss / df_resid if df_resid > 0 else float("nan"),
                      llf=gaussian_llf(rss, nobs) if rss > 0 else float("inf"), deviance=rss, nobs=nobs,
                      n_rows=int(round(nobs)), n_dropped=n_all - int(round(nobs)), df_resid=float(df_resid),
                      df_model=float(k - 1), converged=True, n_iter=0,
                      weight_note=f"answered exactly from the stored moments of view {names.label!r}; "
                                  "no source rows read", n_passes=0)


def _combinations(regions: pa.Table, cats: list[str]) -> list[tuple[tuple, np.ndarray]]:
    """(values of the used categoricals, member regions) for each combination, in key order."""
    if not cats:
        return [((), np.arange(regions.num_rows))]
    groups: dict[tuple, list[int]] = {}
    for i, values in enumerate(zip(*[regions.column(c).to_pylist() for c in cats])):
        groups.setdefault(values, []).append(i)
    order = sorted(groups, key=lambda t: tuple((v is not None, v) for v in t))
    return [(k, np.array(groups[k])) for k in order]
