"""Generate: per region, weighted pseudo-points whose moments match the region's moments.

For a region with N rows, d non-constant variables and M pseudo-points the unknowns are the
points Y (M x d) and the weights w (M). In local units u = (z - mean) / sd the targets are the
region's central, scaled mixed moments t_e = mean(prod_j u_j^e_j). We minimise

    S(Y, w) = sum_e c_e (sum_i pi_i prod_j y_ij^e_j - t_e)^2,    pi = w / N,

with y_ij = lo_j + (hi_j - lo_j) * sigmoid(theta_ij) (values stay inside the region's range)
and pi = softmax(phi) (weights positive, summing to N). Each moment of degree <= 2 gets
c_e = 1, higher degrees share 1 (degree 3 twice degree 4), and moments are used lowest order
first until there are at least as many as unknowns (DuMouchel et al. 1999).

Regions with the same (M, active variables) form one batch solved together in numpy, started
from sampled rows of the region, in two phases:
1. Levenberg-Marquardt on S. Degree <= 2 moments are *not* given a stiff penalty here: with a
   large c_e the iterate crawls along the exact-second-order valley and the degree 3/4
   moments (which decide how well nonlinear models such as logistic regression are
   reproduced) stay poor.
2. Gauss-Newton with minimum-norm steps on the degree <= 2 residuals alone (small K_2 x K_2
   systems), which moves the fit the least onto exact mean and covariance, inside the bounds.
Afterwards an affine map with the least displacement removes the rounding left; regions whose
fit stays poor are restarted from other sampled rows and the best fit is kept; regions whose
second order cannot be made exact inside their bounds get one more point.
"""
from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable
from itertools import product

import numpy as np
import pyarrow as pa

from ._binning import Binning
from ._moments import ROWS_COL, MomentTable, exponents, max_col, min_col, moment_col
from ._spec import SquashSpec

DEG2_WEIGHT = 1.0  # LM phase only: exactness comes from the projection phase, not a stiff penalty
_DEG_RAW_WEIGHT = {3: 2.0, 4: 1.0}
POOR_FIT = 1e-2  # RMS degree 3/4 residual that is always good enough (else: restart if twice the batch median)
_BOUND_SLACK = 1e-9  # relative bound violation repaired by clipping after the exact correction
_PROJECTIONS = 50  # rounds of (exact second-order map, clip to bounds)
_EXACT_TOL = 1e-8  # degree <= 2 error above which a region gets one more point
_BUMPS = 3
_CHUNK = 128  # regions per solver batch
_THREADS = min(4, os.cpu_count() or 1)  # solver threads over chunks
_REL_IMPROVEMENT = 1e-7  # a region stops when a step gains less than this fraction of its cost
_LAM0 = 1e-3  # initial LM damping (Marquardt scaling)
_PROJECT_STEPS = 6  # Gauss-Newton projection steps onto exact degree <= 2 moments


def n_points(n: np.ndarray, alpha: float) -> np.ndarray:
    """M_r = max(1, ceil(alpha * log2 N_r)) for an array of region counts."""
    n = np.asarray(n, dtype=float)
    m = np.ceil(alpha * np.log2(np.maximum(n, 1.0)) - 1e-12)
    return np.maximum(1, m).astype(np.int64)


def exact_row_limit(alpha: float, q: int) -> int:
    """Largest region size kept row by row when M_r reaches N_r (also after extra points are added)."""
    limit = 2 * (q + 1)
    n = 2
    while n < 4096:
        m = n_points(np.array([n]), alpha)[0]
        if m >= n:
            limit = max(limit, n)
        elif n > 64 and m < n // 2:
            break
        n += 1
    return limit


@dataclass(frozen=True)
class MomentPlan:
    """Which local moments a (M, d) batch fits, their weights, and how to form them from raw sums."""

    exps: np.ndarray  # (K, d) exponent matrix
    weights: np.ndarray  # (K,) c_e
    degree: np.ndarray  # (K,)
    fmap: _FeatureMap


def moment_plan(m: int, d: int, degree: int) -> MomentPlan:
    """Lowest-order moments first, all of degree <= 2, until K >= M (d + 1) or none are left."""
    exps = exponents(d, degree)
    low = [e for e in exps if sum(e) <= 2]
    high = [e for e in exps if sum(e) > 2]
    need = max(0, m * (d + 1) - len(low))
    used = low + high[:need]
    deg = np.array([sum(e) for e in used])
    w = np.where(deg <= 2, DEG2_WEIGHT, 0.0)
    high_raw = np.array([_DEG_RAW_WEIGHT.get(int(k), 0.0) for k in deg])
    if high_raw.sum() > 0:
        w = w + high_raw / high_raw.sum()
    exps_arr = np.array(used, dtype=np.int64).reshape(len(used), d)
    return MomentPlan(exps_arr, w, deg, _feature_map(exps_arr))


def central_moments(raw: dict[tuple[int, ...], np.ndarray], n: np.ndarray, q: int, degree: int,
                    mean: np.ndarray, sd: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """Central moments mean(prod ((z_j - mean_j) / sd_j)^e_j) for every region, from raw power sums.

    ``raw[e]`` holds sum(prod z_j^e_j) per region (globally standardised z, so the binomial
    expansion loses little); ``mean``/``sd`` are (R, q).
    """
    out: dict[tuple[int, ...], np.ndarray] = {}
    nf = n.astype(float)
    for e in exponents(q, degree):
        acc = np.zeros_like(nf)
        for k in product(*(range(p + 1) for p in e)):
            coef = np.ones_like(nf)
            for j, (p, kj) in enumerate(zip(e, k)):
                if p - kj:
                    coef = coef * (math.comb(p, kj) * (-mean[:, j]) ** (p - kj))
            sk = nf if not any(k) else raw[tuple(k)]
            acc = acc + coef * (sk / nf)
        scale = np.ones_like(nf)
        for j, p in enumerate(e):
            if p:
                scale = scale * sd[:, j] ** p
        with np.errstate(divide="ignore", invalid="ignore"):
            out[e] = acc / scale
    return out


# --------------------------------------------------------------------------- batched solver

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _softmax(phi: np.ndarray) -> np.ndarray:
    e = np.exp(phi - phi.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Batch:
    """The fixed data of one batch of B regions: targets (B, K), bounds (B, d), plan."""

    plan: MomentPlan
    target: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    corr: np.ndarray  # (B, d, d) target second moments E[u u^T]

    def take(self, idx: np.ndarray) -> Batch:
        return Batch(self.plan, self.target[idx], self.lo[idx], self.hi[idx], self.corr[idx])


@dataclass(frozen=True)
class _FeatureMap:
    """Monomials as products of earlier ones: feature k = feature parent[k] * y[:, :, var[k]]."""

    parent: np.ndarray  # (L,) over the closure (index 0 is the constant 1)
    var: np.ndarray  # (L,)
    used: np.ndarray  # (K,) positions of the fitted moments in the closure
    grad_src: np.ndarray  # (K, d) position of e - unit_j (0 = constant; masked where e_j = 0)
    grad_mul: np.ndarray  # (K, d) e_j
    levels: tuple[tuple[int, int], ...]  # closure positions of each degree 1, 2, ...


def _feature_map(exps: np.ndarray) -> _FeatureMap:
    k, d = exps.shape
    top = int(exps.sum(axis=1).max()) if k else 0
    closure = [(0,) * d] + exponents(d, top) if d else [()]
    pos = {e: i for i, e in enumerate(closure)}
    parent, var = np.zeros(len(closure), dtype=np.int64), np.zeros(len(closure), dtype=np.int64)
    for i, e in enumerate(closure[1:], start=1):
        j = max(jj for jj in range(d) if e[jj])
        prev = list(e)
        prev[j] -= 1
        parent[i], var[i] = pos[tuple(prev)], j
    used = np.array([pos[tuple(int(v) for v in e)] for e in exps], dtype=np.int64)
    src = np.zeros((k, d), dtype=np.int64)
    for a, e in enumerate(exps):
        for j in range(d):
            if e[j]:
                prev = [int(v) for v in e]
                prev[j] -= 1
                src[a, j] = pos[tuple(prev)]
    deg = np.array([sum(e) for e in closure])
    levels = tuple((int(np.searchsorted(deg, t)), int(np.searchsorted(deg, t, side="right"))) for t in range(1, top + 1))
    return _FeatureMap(parent, var, used, src, exps.astype(float), levels)


def _features(y: np.ndarray, fmap: _FeatureMap, with_grad: bool):
    """Monomials of the points, moment-major: f[k,b,i] = prod_j y_bij^e_kj over the fitted moments
    and, optionally, g[k,j,b,i] = d f[k,b,i] / d y_bij. One vectorised product per degree."""
    allf = np.empty((len(fmap.parent),) + y.shape[:2])
    allf[0] = 1.0
    yt = np.moveaxis(y, -1, 0)
    for a, b in fmap.levels:
        np.multiply(allf[fmap.parent[a:b]], yt[fmap.var[a:b]], out=allf[a:b])
    f = allf[fmap.used]
    if not with_grad:
        return f, None
    return f, allf[fmap.grad_src] * fmap.grad_mul[:, :, None, None]


def _residuals(batch: Batch, theta: np.ndarray, phi: np.ndarray, with_jac: bool, sw: np.ndarray):
    """Weighted moment residuals (B, K) and, optionally, their Jacobian (B, K, M d + M)."""
    span = batch.hi - batch.lo
    s = _sigmoid(theta)
    y = batch.lo[:, None, :] + span[:, None, :] * s
    pi = _softmax(phi)
    f, g = _features(y, batch.plan.fmap, with_jac)
    mom = np.einsum("kbi,bi->bk", f, pi)
    r = (mom - batch.target) * sw
    if not with_jac:
        return r, None
    k, d, b, m = g.shape
    pdy = np.moveaxis(pi[:, :, None] * span[:, None, :] * s * (1.0 - s), -1, 0)  # (d, B, M)
    jac = np.empty((b, k, m, d + 1))
    jac[..., :d] = (g * pdy[None]).transpose(2, 0, 3, 1)
    jac[..., d] = ((f - mom.T[:, :, None]) * pi[None]).transpose(1, 0, 2)
    jac *= sw[None, :, None, None]
    return r, jac.reshape(b, k, m * (d + 1))


def _lm(batch: Batch, theta: np.ndarray, phi: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Two phases: LM with degree <= 2 residuals weighted like the others (the fit goes to the
    higher moments instead of crawling along the stiff exact-second-order valley), then
    minimum-norm Gauss-Newton steps onto exact degree <= 2 moments, inside the bounds."""
    theta, phi = _lm_phase(batch, theta, phi, max_iter, np.sqrt(batch.plan.weights))
    return _project_low(batch, theta, phi, _PROJECT_STEPS)


def _project_low(batch: Batch, theta: np.ndarray, phi: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton with minimum-norm steps on the degree <= 2 residuals alone: moves the fit the
    least (in parameter space) onto the manifold where mean and covariance are exact."""
    low = np.flatnonzero(batch.plan.degree <= 2)
    exps = batch.plan.exps[low]
    plan = MomentPlan(exps, np.ones(len(low)), batch.plan.degree[low], _feature_map(exps))
    sub = Batch(plan, batch.target[:, low], batch.lo, batch.hi, batch.corr)
    b, m, d = theta.shape
    ones = np.ones(len(low))

    def split(v: np.ndarray):
        v = v.reshape(len(v), m, d + 1)
        return v[:, :, :d], v[:, :, d]

    x = np.concatenate([theta, phi[:, :, None]], axis=2).reshape(b, m * (d + 1))
    active = np.arange(b)
    r, _ = _residuals(sub, theta, phi, False, ones)
    cost = (r * r).sum(axis=1)
    for _ in range(iters):
        if active.size == 0:
            break
        st = sub.take(active)
        r, jac = _residuals(st, *split(x[active]), True, ones)
        jjt = jac @ jac.transpose(0, 2, 1)
        k = jjt.shape[1]
        jjt[:, np.arange(k), np.arange(k)] += 1e-12 * np.einsum("bii->b", jjt)[:, None] + 1e-300
        step = -(jac.transpose(0, 2, 1) @ np.linalg.solve(jjt, r[:, :, None]))[:, :, 0]
        t = np.ones(len(active))
        x0 = x[active]
        for _h in range(6):  # step halving until the residual drops
            r_new, _ = _residuals(st, *split(x0 + t[:, None] * step), False, ones)
            c_new = (r_new * r_new).sum(axis=1)
            ok = c_new < cost[active]
            if ok.all():
                break
            t = np.where(ok, t, 0.5 * t)
        x[active[ok]] = (x0 + t[:, None] * step)[ok]
        cost[active[ok]] = c_new[ok]
        active = active[ok & (c_new > 1e-28)]
    return split(x)


def _lm_phase(batch: Batch, theta: np.ndarray, phi: np.ndarray, max_iter: int, sw) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on all regions of the batch at once; converged regions drop out."""
    b, m, d = theta.shape
    x = np.concatenate([theta, phi[:, :, None]], axis=2).reshape(b, m * (d + 1))
    lam = np.full(b, _LAM0)
    active = np.arange(b)

    def split(v: np.ndarray):
        v = v.reshape(len(v), m, d + 1)
        return v[:, :, :d], v[:, :, d]

    r, _ = _residuals(batch, theta, phi, False, sw)
    cost = (r * r).sum(axis=1)
    nn = x.shape[1]
    normal = np.empty((b, nn, nn))  # J'J at the current x of each region, kept while steps fail
    grad = np.empty((b, nn))
    stale = np.ones(b, dtype=bool)
    eye = np.arange(nn)
    for _ in range(max_iter):
        if active.size == 0:
            break
        fresh = active[stale[active]]
        if fresh.size:
            r, jac = _residuals(batch.take(fresh), *split(x[fresh]), True, sw)
            jt = jac.transpose(0, 2, 1)
            normal[fresh] = jt @ jac
            grad[fresh] = (jt @ r[:, :, None])[:, :, 0]
            stale[fresh] = False
        a = normal[active]
        diag = a[:, eye, eye]
        a[:, eye, eye] += lam[active, None] * (diag + 1e-9) + 1e-12
        step = -np.linalg.solve(a, grad[active][:, :, None])[:, :, 0]
        x_new = x[active] + step
        r_new, _ = _residuals(batch.take(active), *split(x_new), False, sw)
        c_new = (r_new * r_new).sum(axis=1)
        ok = c_new < cost[active]
        improved = cost[active] - c_new
        idx_ok = active[ok]
        x[idx_ok] = x_new[ok]
        stale[idx_ok] = True
        lam[idx_ok] = np.maximum(lam[idx_ok] / 3.0, 1e-9)
        lam[active[~ok]] *= 4.0
        small = ok & (improved <= _REL_IMPROVEMENT * cost[active])
        cost[idx_ok] = c_new[ok]
        done = small | (lam[active] > 1e8) | (cost[active] < 1e-20)
        active = active[~done]
    return split(x)


def _sqrtm(a: np.ndarray, inverse: bool = False) -> np.ndarray:
    vals, vecs = np.linalg.eigh(a)
    vals = np.maximum(vals, 1e-300)
    p = -0.5 if inverse else 0.5
    return (vecs * vals[:, None, :] ** p) @ vecs.transpose(0, 2, 1)


def _exact_second_order(y: np.ndarray, pi: np.ndarray, corr: np.ndarray, full: bool) -> np.ndarray:
    """Least-displacement affine map making weighted mean 0 and second moments ``corr`` exact.

    ``full``: match the whole covariance (needs M > d); else only means and variances.
    """
    mean = np.einsum("bi,bij->bj", pi, y)
    c = y - mean[:, None, :]
    cov = np.einsum("bi,bij,bik->bjk", pi, c, c)
    if not full:
        sd = np.sqrt(np.maximum(np.einsum("bjj->bj", cov), 1e-300))
        target = np.sqrt(np.einsum("bjj->bj", corr))
        return c * (target / sd)[:, None, :]
    r_half = _sqrtm(corr)
    mid = _sqrtm(r_half @ cov @ r_half, inverse=True)
    amap = r_half @ mid @ r_half  # maps cov onto corr with least displacement (Gaussian OT map)
    return np.einsum("bjk,bik->bij", amap, c)


@dataclass(frozen=True)
class Fit:
    """Solved points (local units) and weights (fractions) for a batch, with fit diagnostics."""

    y: np.ndarray  # (B, M, d)
    pi: np.ndarray  # (B, M)
    resid2: np.ndarray  # (B,) max |residual| of degree <= 2 moments after correction
    resid_high: np.ndarray  # (B,) RMS residual of the used degree 3/4 moments
    bound_excess: np.ndarray  # (B,) largest bound violation before clipping, relative to span
    restarts: np.ndarray  # (B,) restarts used


def _finish(batch: Batch, theta: np.ndarray, phi: np.ndarray, full: bool) -> Fit:
    """Make degree <= 2 moments exact: alternate the affine correction with clipping to the box."""
    span = batch.hi - batch.lo
    lo, hi = batch.lo[:, None, :], batch.hi[:, None, :]
    y0 = lo + span[:, None, :] * _sigmoid(theta)
    pi = _softmax(phi)
    y = y0.copy()
    excess = np.zeros(len(y))
    todo = np.arange(len(y))  # regions still outside their box after the last exact map
    for _ in range(_PROJECTIONS):
        yt = _exact_second_order(y[todo], pi[todo], batch.corr[todo], full)
        over = np.maximum(yt - hi[todo], lo[todo] - yt) / span[todo, None, :]
        excess[todo] = np.maximum(over.max(axis=(1, 2)), 0.0)
        bad = excess[todo] > _BOUND_SLACK
        y[todo] = np.where(bad[:, None, None], np.clip(yt, lo[todo], hi[todo]), yt)
        todo = todo[bad]
        if todo.size == 0:
            break
    use = excess <= _BOUND_SLACK  # elsewhere keep the in-bounds least-squares fit
    y = np.where(use[:, None, None], np.clip(y, lo, hi), y0)
    f, _ = _features(y, batch.plan.fmap, False)
    mom = np.einsum("kbi,bi->bk", f, pi)
    err = mom - batch.target
    low = batch.plan.degree <= 2
    r2 = np.abs(err[:, low]).max(axis=1)
    rh = np.sqrt((err[:, ~low] ** 2).mean(axis=1)) if (~low).any() else np.zeros(len(y))
    return Fit(y, pi, r2, rh, excess, np.zeros(len(y), dtype=np.int64))


def _start(batch: Batch, y0: np.ndarray, have: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start from sampled rows of each region (``have`` marks real ones, the rest random normal),
    with equal weights, mapped to match mean and covariance and pulled inside the bounds."""
    b, m, d = y0.shape
    y = np.where(have[:, :, None], y0, rng.standard_normal((b, m, d)))
    lo, hi = batch.lo[:, None, :], batch.hi[:, None, :]
    span = hi - lo
    pi = np.full((b, m), 1.0 / m)
    y = _exact_second_order(np.clip(y, lo, hi), pi, batch.corr, m > d)
    p = np.clip((y - lo) / span, 1e-3, 1 - 1e-3)
    return _logit(p), np.zeros((b, m))


def solve_batch(batch: Batch, m: int, starts: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], *,
                seed: int, key: tuple[int, ...], restarts: int, max_iter: int, full: bool) -> Fit:
    """Fit every region of the batch; restart poor regions from new starts and keep the best.

    ``starts(regions, attempt)`` gives start points (B, M, d) in local units and which are real rows.
    """
    everyone = np.arange(len(batch.target))
    rng = np.random.default_rng([seed & 0xFFFFFFFF, m, *key, 0])
    theta, phi = _start(batch, *starts(everyone, 0), rng)
    theta, phi = _lm(batch, theta, phi, max_iter)
    best = _finish(batch, theta, phi, full)
    for attempt in range(1, restarts + 1):
        typical = 2.0 * float(np.median(best.resid_high))
        poor = np.flatnonzero((best.resid2 > _EXACT_TOL) | (best.resid_high > max(POOR_FIT, typical)))
        if poor.size == 0:
            break
        sub = batch.take(poor)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, m, *key, attempt])
        t2, p2 = _start(sub, *starts(poor, attempt), rng)
        t2, p2 = _lm(sub, t2, p2, max_iter)
        cand = _finish(sub, t2, p2, full)
        better = _score(cand) < _score(best)[poor]
        idx = poor[better]
        fields = {}
        for name in ("y", "pi", "resid2", "resid_high", "bound_excess"):
            arr = getattr(best, name).copy()
            arr[idx] = getattr(cand, name)[better]
            fields[name] = arr
        rs = best.restarts.copy()
        rs[poor] = attempt
        best = Fit(**fields, restarts=rs)
    return best


def _score(fit: Fit) -> np.ndarray:
    """One number per region: degree-2 misfit dominates, then the higher moments."""
    return fit.resid_high + 1e6 * fit.resid2


# --------------------------------------------------------------------------- moment table -> points

@dataclass(frozen=True)
class Generated:
    """Output rows (region order) and one diagnostics row per region."""

    table: pa.Table
    regions: pa.Table


@dataclass(frozen=True)
class _Regions:
    """Per-region facts derived once from the moment table (arrays over regions, (R, q) per variable)."""

    n: np.ndarray
    lo_x: np.ndarray
    hi_x: np.ndarray
    present: np.ndarray  # variable not NULL in the region
    active: np.ndarray  # variable varies in the region: fitted
    mean_z: np.ndarray
    sd_z: np.ndarray
    central: dict[tuple[int, ...], np.ndarray]
    center: np.ndarray
    scale: np.ndarray

    @property
    def mean_x(self) -> np.ndarray:
        """Region means on the raw scale, clipped into the range (constant columns: their value)."""
        return np.clip(self.center + self.scale * self.mean_z, self.lo_x, self.hi_x)


def _regions(moments: MomentTable, binning: Binning, degree: int) -> _Regions:
    tbl, q = moments.table, len(binning.quantitative)
    n = moments.counts()
    nf = n.astype(float)
    empty = np.empty((len(n), 0))
    lo_x = np.column_stack([_col(tbl, min_col(j)) for j in range(q)]) if q else empty
    hi_x = np.column_stack([_col(tbl, max_col(j)) for j in range(q)]) if q else empty
    raw = {e: np.nan_to_num(_col(tbl, moment_col(e))) for e in moments.exps}
    mean_z = np.column_stack([raw[_unit(q, j)] / nf for j in range(q)]) if q else empty
    var_z = np.column_stack([raw[_unit(q, j, 2)] / nf for j in range(q)]) - mean_z**2 if q else empty
    sd_z = np.sqrt(np.maximum(var_z, 0.0))
    present = ~np.isnan(lo_x)
    active = present & (hi_x > lo_x) & (sd_z > 1e-9 * np.maximum(1.0, np.abs(mean_z)))
    central = central_moments(raw, n, q, degree, mean_z, np.where(sd_z > 0, sd_z, 1.0)) if q else {}
    return _Regions(n, lo_x, hi_x, present, active, mean_z, sd_z, central,
                    np.array(binning.center), np.array(binning.scale))


@dataclass(frozen=True)
class _Sample:
    """Sampled rows grouped by region (standardised z), used as solver starts."""

    first: np.ndarray
    count: np.ndarray
    z: np.ndarray

    @classmethod
    def build(cls, region: np.ndarray, values: np.ndarray, reg: _Regions) -> _Sample:
        order = np.argsort(region, kind="stable")
        region, values = region[order], values[order]
        ids = np.arange(len(reg.n))
        first = np.searchsorted(region, ids)
        return cls(first, np.searchsorted(region, ids, side="right") - first, (values - reg.center) / reg.scale)


def _fit_group(reg: _Regions, sample: _Sample, idx: np.ndarray, mr: int, act: tuple[int, ...],
               spec: SquashSpec) -> tuple[np.ndarray, np.ndarray, Fit]:
    """Solve one batch: regions ``idx`` with ``mr`` points and active variables ``act``.

    Returns raw-scale points (B, mr, q), weights (B, mr) and the fit diagnostics.
    """
    q, a, dd = reg.lo_x.shape[1], np.array(act), len(act)
    plan = moment_plan(mr, dd, spec.degree)
    target = np.column_stack([reg.central[_scatter(q, act, e)][idx] for e in plan.exps])
    corr = np.empty((len(idx), dd, dd))
    for i, k in product(range(dd), range(dd)):
        corr[:, i, k] = reg.central[_scatter(q, act, np.eye(dd, dtype=int)[i] + np.eye(dd, dtype=int)[k])][idx]
    mu, sd = reg.mean_z[np.ix_(idx, a)], reg.sd_z[np.ix_(idx, a)]
    lo_x, hi_x = reg.lo_x[np.ix_(idx, a)], reg.hi_x[np.ix_(idx, a)]
    to_u = lambda x: ((x - reg.center[a]) / reg.scale[a] - mu) / sd  # noqa: E731
    batch = Batch(plan, target, to_u(lo_x), to_u(hi_x), corr)

    def starts(sub: np.ndarray, attempt: int) -> tuple[np.ndarray, np.ndarray]:
        k = attempt * mr + np.arange(mr)[None, :]
        have = k < sample.count[idx[sub]][:, None]
        if not len(sample.z):
            return np.zeros((len(sub), mr, dd)), have
        pos = np.where(have, sample.first[idx[sub]][:, None] + k, 0)
        y0 = (sample.z[pos][:, :, a] - mu[sub][:, None, :]) / sd[sub][:, None, :]
        return np.nan_to_num(y0), have

    def solve_chunk(c0: int) -> Fit:  # seeded by its own key: the same result in any thread or order
        part = np.arange(c0, min(len(idx), c0 + _CHUNK))
        return solve_batch(batch.take(part), mr, lambda sub, attempt: starts(part[sub], attempt),
                           seed=spec.seed, key=(dd, *act, c0), restarts=spec.restarts,
                           max_iter=spec.max_iter, full=mr > dd)

    chunks = range(0, len(idx), _CHUNK)  # chunks keep the Jacobians in cache
    if len(chunks) > 1 and _THREADS > 1:  # numpy releases the GIL in its kernels
        with ThreadPoolExecutor(min(_THREADS, len(chunks))) as pool:
            fits = list(pool.map(solve_chunk, chunks))
    else:
        fits = [solve_chunk(c0) for c0 in chunks]
    fit = Fit(*(np.concatenate([getattr(f, k) for f in fits]) for k in Fit.__dataclass_fields__))
    x = np.repeat(reg.mean_x[idx][:, None, :], mr, axis=1)
    xa = reg.center[a] + reg.scale[a] * (mu[:, None, :] + sd[:, None, :] * fit.y)
    x[:, :, a] = np.clip(xa, lo_x[:, None, :], hi_x[:, None, :])
    return x, reg.n[idx][:, None] * fit.pi, fit


def generate(moments: MomentTable, binning: Binning, spec: SquashSpec, fetch_rows: int,
             sample: tuple[np.ndarray, np.ndarray]) -> Generated:
    """Turn every region's moments into weighted pseudo-points (see the module docstring).

    ``sample`` is (region index, raw values) of the binning sample; its rows seed the solver.
    A region whose mean and covariance cannot be matched exactly inside its bounds gets one
    more point and is solved again (up to ``_BUMPS`` times); tiny regions end as their own rows.
    The solver's many small matrices run one BLAS thread each (parallelism is over chunks):
    a multithreaded BLAS on 78 x 78 systems spends its time synchronising, measured 9x slower.
    """
    with _single_threaded_blas():
        return _generate(moments, binning, spec, fetch_rows, sample)


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _generate(moments: MomentTable, binning: Binning, spec: SquashSpec, fetch_rows: int,
              sample: tuple[np.ndarray, np.ndarray]) -> Generated:
    tbl, q = moments.table, len(binning.quantitative)
    reg = _regions(moments, binning, spec.degree)
    n, d = reg.n, reg.active.sum(axis=1)
    m = np.ones(len(n), dtype=np.int64) if spec.alpha == 0 else n_points(n, spec.alpha)
    if spec.alpha > 0 and spec.exact_covariance:
        m = np.maximum(m, np.minimum(n, d + 1))
    m = np.minimum(m, n)
    m[d == 0] = 1
    kind = np.full(len(n), "fit", dtype=object)
    kind[m == 1] = "mean"
    smp = _Sample.build(*sample, reg)
    stats = {k: np.zeros(len(n)) for k in ("resid2", "resid_high", "bound_excess")}
    restarts = np.zeros(len(n), dtype=np.int64)
    solved: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # region -> (points (m, q), weights)
    for bump in range(_BUMPS + 1):
        rows = (kind == "fit") & (m >= n) & (n <= fetch_rows)
        kind[rows] = "rows"
        for k in stats:  # the region's own rows: exact (an earlier fit's diagnostics no longer apply)
            stats[k][rows] = 0.0
        pending = np.flatnonzero((kind == "fit") & ~np.isin(np.arange(len(n)), list(solved)))
        groups: dict[tuple, list[int]] = {}
        for r in pending:
            groups.setdefault((int(m[r]), tuple(np.flatnonzero(reg.active[r]))), []).append(int(r))
        for (mr, act), members in sorted(groups.items()):
            idx = np.array(members)
            x, w, fit = _fit_group(reg, smp, idx, mr, act, spec)
            for k in stats:
                stats[k][idx] = getattr(fit, k)
            restarts[idx] = fit.restarts
            for i, r in enumerate(idx):
                solved[int(r)] = (x[i], w[i])
        retry = [r for r in solved if stats["resid2"][r] > _EXACT_TOL and m[r] < n[r]]
        if not retry or bump == _BUMPS:  # the last round keeps its fits (else their points were lost)
            break
        for r in retry:
            del solved[r]
            m[r] += 1
    pieces_reg, pieces_x, pieces_w = [], [], []
    mean_idx = np.flatnonzero(kind == "mean")
    pieces_reg.append(mean_idx)
    pieces_x.append(reg.mean_x[mean_idx])
    pieces_w.append(n[mean_idx].astype(float))
    row_idx = np.flatnonzero(kind == "rows")
    if row_idx.size:
        lists = tbl.column(ROWS_COL).take(pa.array(row_idx)).to_pylist()
        pieces_reg.append(np.repeat(row_idx, [len(v) for v in lists]))
        pieces_x.append(np.array([row for v in lists for row in v], dtype=float).reshape(-1, q))
        pieces_w.append(np.ones(len(pieces_reg[-1])))
    for r, (x, w) in solved.items():
        pieces_reg.append(np.full(len(w), r))
        pieces_x.append(x)
        pieces_w.append(w)
    rid = np.concatenate(pieces_reg)
    order = np.argsort(rid, kind="stable")
    rid = rid[order]
    xs = np.concatenate(pieces_x).reshape(len(order), q)[order]
    w = np.concatenate(pieces_w)[order]
    xs[~reg.present[rid]] = np.nan
    take = pa.array(rid)
    cols: dict[str, pa.Array] = {c: tbl.column(c).take(take) for c in moments.categorical}
    for j, c in enumerate(binning.quantitative):
        cols[c] = pa.array(xs[:, j], mask=np.isnan(xs[:, j]))
    cols[spec.weight] = pa.array(w)
    regions = pa.table({
        **{c: tbl.column(c) for c in moments.categorical + moments.key_columns},
        "n_rows": pa.array(n), "n_points": pa.array(np.bincount(rid, minlength=len(n))),
        "n_vars": pa.array(d), "kind": pa.array(kind.astype(str)),
        "max_resid_deg2": pa.array(stats["resid2"]), "rms_resid_deg34": pa.array(stats["resid_high"]),
        "bound_excess": pa.array(stats["bound_excess"]), "restarts": pa.array(restarts),
    })
    return Generated(pa.table(cols), regions)


def _col(tbl: pa.Table, name: str) -> np.ndarray:
    return tbl.column(name).to_numpy(zero_copy_only=False).astype(float)


def _unit(q: int, j: int, p: int = 1) -> tuple[int, ...]:
    e = [0] * q
    e[j] = p
    return tuple(e)


def _scatter(q: int, act: tuple[int, ...], local) -> tuple[int, ...]:
    e = [0] * q
    for j, p in zip(act, local):
        e[j] = int(p)
    return tuple(e)
