"""Generate: per region, weighted pseudo-points whose moments match the region's moments.

Reads the DOUBLE moment table (sums in each region's box units, see ``binning.py``), forms each
region's count, range, mean, covariance and standardised degree 3-4 moments in those units (all
O(1), whatever the column's magnitude), and hands the regions to the solver (``solver.py``),
which returns points with exact count, mean and covariance inside the region's range and the
higher moments fitted. Tiny regions keep their own rows; ``alpha = 0`` gives one point (the
mean) per region, as the paper's "Means" baseline. Points go back to raw units per region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..sql.names import ROWS_COL, max_col, min_col, moment_col
from . import solver
from .binning import Binning
from .moments import MomentTable
from .points import n_points
from .spec import SquashSpec


def exact_row_limit(alpha: float, q: int, method: str) -> int:
    """Largest region size kept row by row when M_r reaches N_r."""
    limit = 2 * (q + 1)
    n = 2
    while n < 4096:
        m = n_points(np.array([n]), np.array([q]), alpha, method)[0]
        if m >= n:
            limit = max(limit, n)
        elif n > 64 and m < n // 2:
            break
        n += 1
    return limit


def central_moments(raw: dict[tuple[int, ...], np.ndarray], n: np.ndarray, mean: np.ndarray,
                    sd: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """Central moments mean(prod ((z_j - mean_j) / sd_j)^e_j) for every region, from raw power sums.

    ``raw[e]`` holds sum(prod z_j^e_j) per region (z in the region's box units, so the binomial
    expansion loses little); ``mean``/``sd`` are (R, q). Monomials whose lower terms were not
    all summed are left out.
    """
    from itertools import product
    from math import comb

    out: dict[tuple[int, ...], np.ndarray] = {}
    nf = n.astype(float)
    for e in raw:
        subs = [k for k in product(*(range(p + 1) for p in e)) if any(k) and k != e]
        if any(k not in raw for k in subs):
            continue
        acc = np.zeros_like(nf)
        for k in product(*(range(p + 1) for p in e)):
            coef = np.ones_like(nf)
            for j, (p, kj) in enumerate(zip(e, k)):
                if p - kj:
                    coef = coef * (comb(p, kj) * (-mean[:, j]) ** (p - kj))
            acc = acc + coef * ((nf if not any(k) else raw[tuple(k)]) / nf)
        scale = np.ones_like(nf)
        for j, p in enumerate(e):
            if p:
                scale = scale * sd[:, j] ** p
        with np.errstate(divide="ignore", invalid="ignore"):
            out[e] = acc / scale
    return out


@dataclass(frozen=True)
class Generated:
    """Output rows (region order) and one diagnostics row per region."""

    table: pa.Table
    regions: pa.Table


def generate(moments: MomentTable, binning: Binning, spec: SquashSpec, fetch_rows: int,
             sample: tuple[np.ndarray, np.ndarray], most: int | None = None,
             advance: Callable[[int], None] | None = None) -> Generated:
    """Turn every region's moments into weighted pseudo-points (see the module docstring).

    ``sample`` is (region index, raw values) of the binning sample; its rows start the solver
    in their regions (k-means centroids) and feed its exact fallbacks. ``most``: refuse, before
    solving anything, when the regions would get at least this many points. ``advance(k)``
    is told each time k more regions are done (a progress bar).
    """
    tbl, q = moments.table, len(binning.quantitative)
    n = moments.counts()
    nf = n.astype(float)
    col = lambda name: tbl.column(name).to_numpy(zero_copy_only=False).astype(float)  # noqa: E731
    empty = np.empty((len(n), 0))
    lo_x = np.column_stack([col(min_col(j)) for j in range(q)]) if q else empty
    hi_x = np.column_stack([col(max_col(j)) for j in range(q)]) if q else empty
    center, scale = binning.frames(tbl.select(list(moments.key_columns)))
    raw = {e: np.nan_to_num(col(moment_col(e))) for e in moments.exps}
    unit = [tuple(int(i == j) for i in range(q)) for j in range(q)]
    mean = np.column_stack([raw[unit[j]] / nf for j in range(q)]) if q else empty
    second = np.zeros((len(n), q, q))
    for j in range(q):
        for k in range(q):
            second[:, j, k] = raw[tuple(a + b for a, b in zip(unit[j], unit[k]))] / nf
    cov = second - mean[:, :, None] * mean[:, None, :]
    present = ~np.isnan(lo_x)
    sd = np.sqrt(np.maximum(np.einsum("rjj->rj", cov), 0.0)) if q else empty
    active = present & (hi_x > lo_x) & (sd > 0)
    d = active.sum(axis=1)
    m = n_points(n, d, spec.alpha, spec.method, spec.exact_covariance)
    if most is not None and int(m.sum()) >= most:
        raise InputError(f"squashing would not shrink the input: {int(m.sum()):,} pseudo-points for {int(n.sum()):,} rows "
                         f"in {len(n):,} regions (alpha={spec.alpha:g}); lower alpha or size, or coarsen the regions")
    kind = np.full(len(n), "fit", dtype=object)
    kind[(spec.alpha == 0) | (d == 0)] = "mean"
    has_rows = ROWS_COL in tbl.column_names
    # a region that cannot shrink while holding its covariance keeps its rows (exact in everything)
    kind[(kind == "fit") & (n <= np.maximum(m, d + 1)) & (n <= fetch_rows) & has_rows] = "rows"
    lo_z, hi_z = (lo_x - center) / scale, (hi_x - center) / scale  # the region's range in its box units
    x_mean = np.clip(center + scale * mean, lo_x, hi_x)  # constant columns: their value
    err2 = np.zeros(len(n))
    rms34 = np.zeros(len(n))
    pieces_reg, pieces_x, pieces_w = [], [], []
    means = np.flatnonzero(kind == "mean")
    pieces_reg.append(means)
    pieces_x.append(x_mean[means])
    pieces_w.append(nf[means])
    rows = np.flatnonzero(kind == "rows")
    if rows.size:
        lists = tbl.column(ROWS_COL).take(pa.array(rows)).to_pylist()
        pieces_reg.append(np.repeat(rows, [len(v) for v in lists]))
        pieces_x.append(np.array([r for v in lists for r in v], dtype=float).reshape(-1, q))
        pieces_w.append(np.ones(len(pieces_reg[-1])))
    fit = np.flatnonzero(kind == "fit")
    if advance is not None:
        advance(len(n) - fit.size)  # means and rows: done already
    if fit.size:
        sd_safe = np.where(sd > 0, sd, 1.0)
        central = central_moments(raw, n, mean, sd_safe)
        higher = {e: v[fit] for e, v in central.items() if sum(e) in (3, 4)} if spec.degree > 2 else {}
        region, values = sample
        ok = region >= 0
        by_region = [[] for _ in range(len(n))]
        for r, v in zip(region[ok], values[ok]):
            by_region[r].append(v)
        samples = []
        for r in fit:
            s = np.array(by_region[r], dtype=float).reshape(-1, q)
            s = s[~np.isnan(s[:, present[r]]).any(axis=1)] if len(s) else s
            samples.append((s - center[r]) / scale[r])
        pts, w, rid, diag = solver.solve(nf[fit].astype(np.int64), lo_z[fit], hi_z[fit], mean[fit], cov[fit], higher,
                                         m[fit], samples, seed=spec.seed, iters=spec.max_iter, advance=advance)
        x = center[fit][rid] + scale[fit][rid] * pts
        x = np.clip(x, lo_x[fit][rid], hi_x[fit][rid])
        kind[fit] = diag["method"]
        err2[fit] = diag["err2"] * solver.EXACT_TOL
        rms34[fit] = np.nan_to_num(diag["rms34"])
        # where the solver could not match a region but its rows are at hand, the rows are the answer
        fallback = fit[(diag["method"] == "inexact") & (n[fit] <= fetch_rows)] if has_rows else fit[:0]
        keep = ~np.isin(fit[rid], fallback)
        pieces_reg.append(fit[rid][keep])
        pieces_x.append(x[keep])
        pieces_w.append(w[keep])
        if fallback.size:
            lists = tbl.column(ROWS_COL).take(pa.array(fallback)).to_pylist()
            pieces_reg.append(np.repeat(fallback, [len(v) for v in lists]))
            pieces_x.append(np.array([r for v in lists for r in v], dtype=float).reshape(-1, q))
            pieces_w.append(np.ones(len(pieces_reg[-1])))
            kind[fallback] = "rows"
            err2[fallback] = rms34[fallback] = 0.0
    rid = np.concatenate(pieces_reg)
    order = np.argsort(rid, kind="stable")
    rid = rid[order]
    xs = np.concatenate(pieces_x).reshape(len(order), q)[order]
    w = np.concatenate(pieces_w)[order]
    xs[~present[rid]] = np.nan
    take = pa.array(rid)
    cols: dict[str, pa.Array] = {c: tbl.column(c).take(take) for c in moments.categorical}
    for j, c in enumerate(binning.quantitative):
        cols[c] = pa.array(xs[:, j], mask=np.isnan(xs[:, j]))
    cols[spec.weight] = pa.array(w)
    regions = pa.table({
        **{c: tbl.column(c) for c in moments.categorical + moments.key_columns},
        "n_rows": pa.array(n), "n_points": pa.array(np.bincount(rid, minlength=len(n))),
        "n_vars": pa.array(d), "kind": pa.array(kind.astype(str)),
        "max_resid_deg2": pa.array(err2), "rms_resid_deg34": pa.array(rms34),
    })
    return Generated(pa.table(cols), regions)
