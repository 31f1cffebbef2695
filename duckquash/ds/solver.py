"""The batched moment-matching solver behind Generate: weighted points matching a batch of regions' moments.

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

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .moments import exponents

DEG2_WEIGHT = 1.0  # LM phase only: exactness comes from the projection phase, not a stiff penalty
_DEG_RAW_WEIGHT = {3: 2.0, 4: 1.0}
POOR_FIT = 1e-2  # RMS degree 3/4 residual that is always good enough (else: restart if twice the batch median)
_BOUND_SLACK = 1e-9  # relative bound violation repaired by clipping after the exact correction
_PROJECTIONS = 50  # rounds of (exact second-order map, clip to bounds)
EXACT_TOL = 1e-8  # degree <= 2 error above which a region is not exact (and gets one more point)
_REL_IMPROVEMENT = 1e-7  # a region stops when a step gains less than this fraction of its cost
_LAM0 = 1e-3  # initial LM damping (Marquardt scaling)
_PROJECT_STEPS = 6  # Gauss-Newton projection steps onto exact degree <= 2 moments


@dataclass(frozen=True)
class MomentPlan:
    """Which local moments a (M, d) batch fits, their weights, and how to form them from raw sums."""

    exps: np.ndarray  # (K, d) exponent matrix
    weights: np.ndarray  # (K,) c_e
    degree: np.ndarray  # (K,)
    fmap: _FeatureMap


def moment_plan(m: int, d: int, degree: int, available=None) -> MomentPlan:
    """Lowest-order moments first, all of degree <= 2, until K >= M (d + 1) or none are left.

    ``available``: if given, a predicate telling which (local) higher moments were summed.
    """
    exps = exponents(d, degree)
    low = [e for e in exps if sum(e) <= 2]
    high = [e for e in exps if sum(e) > 2 and (available is None or available(e))]
    need = max(0, m * (d + 1) - len(low))
    used = low + high[:need]
    deg = np.array([sum(e) for e in used])
    w = np.where(deg <= 2, DEG2_WEIGHT, 0.0)
    high_raw = np.array([_DEG_RAW_WEIGHT.get(int(k), 0.0) for k in deg])
    if high_raw.sum() > 0:
        w = w + high_raw / high_raw.sum()
    exps_arr = np.array(used, dtype=np.int64).reshape(len(used), d)
    return MomentPlan(exps_arr, w, deg, _feature_map(exps_arr))


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
        poor = np.flatnonzero((best.resid2 > EXACT_TOL) | (best.resid_high > max(POOR_FIT, typical)))
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
