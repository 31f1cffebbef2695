"""The moment-matching solver behind Generate: weighted pseudo-points per region, exact degree <= 2 moments.

For every region r we are given its row count N_r, per-column min/max, exact mean and covariance
and (optionally) the central standardised moments of degree 3 and 4; we return M_r weighted points
that

* have strictly positive, finite weights summing to N_r,
* reproduce the mean and covariance exactly (to ~1e-12 in region-sd units) -- or, when there are
  too few points for a covariance (M_r <= rank), means and variances,
* lie inside the region's [min, max] box in every column,

and fit the degree 3/4 moments as well as the solver manages (they decide how well nonlinear
models such as logistic regression with squares and interactions are reproduced).

Algorithm (each stage runs only on the regions the previous one did not finish):

0. ``prepare``: work per region in local units u = (x - mean) / sd (no powers of raw values, so
   magnitudes up to 1e300 are harmless); columns with lo == hi or sd == 0 are *inactive*
   (emitted at their exact value). The target covariance is the correlation matrix R; it is
   factorised R = P^T P with P (rank x d) from its eigen-decomposition, which handles
   rank-deficient regions (few distinct rows, collinear columns) and defines whitened
   coordinates v with u = v P.
1. ``fit`` (batched over regions with equal (M, rank, d, fitted moments), vectorised numpy):
   start = k-means centroids of the region's sampled rows with cluster sizes as weights (their
   weighted mean is the sample mean; they lie inside the data hull), mapped to exact second
   order by the *retraction* (weighted whitening, then u = v P: mean 0 and covariance R for
   any points and weights). Then Levenberg-Marquardt over points and log-weights on the
   degree 3/4 residuals plus a hinge penalty for approaching the box walls: each step solves
   the damped Gauss-Newton system in the tangent space of the exact-second-order manifold (a
   KKT system with the linearised degree <= 2 constraints; analytic Jacobians, the moments are
   polynomials in the points and linear in the weights), then the retraction removes the
   second-order drift. Log-weights (clamped within PHI_RANGE of the largest) cannot underflow.
   If the final points are inside the box (1e-12 slack, then clipped) the region is done ("fit").
   Fitted moments: lowest orders first until K >= M (d + 1) as in the paper (MOMENT_CAP =
   "paper"); fitting all 105 degree-3/4 moments at M ~ log2 N halved the RMS over all of them
   but doubled the second-order logistic MSE (see REPORT.md), so the paper's rule is the default.
2. ``project``: bounded Gauss-Newton projection from the clipped fit: minimum-norm steps on the
   degree <= 2 residuals over points (box-clipped, active set) and log-weights. Moves the least
   onto exact second order inside the box; needed for columns whose data sit on their bounds
   (0/1 codes, masses at min/max) where every point must be exactly on a bound ("project").
3. ``lp``: moments of degree <= 2 are linear in the weights for fixed points: a phase-1 LP
   (HiGHS) over candidate points (sampled rows, fitted points, box corners / axis extremes),
   with column generation (new points maximising the dual's quadratic over the box by
   coordinate ascent) until the target is reached, then an exact least-squares polish on the
   LP support. Uses up to 1 + d + d(d+1)/2 points, possibly more than M_r ("lp"; diag says so).
4. ``rows``: when the sample holds all N_r rows, the rows themselves (exact in every moment).
5. ``inexact``: nothing worked; the region is returned from the best attempt and flagged in
   diag (method "inexact", err2 = its degree <= 2 error in units of the tolerance) -- never
   silently.

Tolerances: degree <= 2 errors are accepted up to EXACT_TOL (1e-11) in sd units plus each
column's rounding floor, 8 ulp(max(|lo|, |hi|)) / sd: a raw double cannot place a point more
finely, which matters only for near-constant columns (sd < ~1e-7 |mean|). Where rounding of such
a column's given moments breaks Bhatia-Davis (var <= (mean - lo)(hi - mean)) by less than its
floor, the target variance is put on the bound (no exact solution exists otherwise).

Determinism: every random draw comes from a generator seeded by (seed, batch key, chunk start);
chunks are fixed by the input order, so the output does not depend on the thread count.
"""
from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
import dataclasses
from dataclasses import dataclass

import numpy as np

from threadpoolctl import threadpool_limits  # many tiny LAPACK calls: one BLAS thread each, parallelism over chunks

# ----------------------------------------------------------------------------- tuning constants
# Speed (issue 14), measured on the 3,573 regions of a 300k-row squash (5 columns, 7 points and
# 22 fitted moments per region), one thread, CPU seconds for Generate's solver:
#   CHUNK 16, damping 1e-3 (floor 1e-7), 30 LM iterations (before)       24.2 s
#   CHUNK 64                                                              16.9 s
#   CHUNK 256 (numpy call overhead per batch amortised)                   12.9 s
#   + damping 0.1 (floor 1e-2), 20 iterations, vectorised prepare         ~8.6-10 s (loaded machine)
# Larger starting damping converges faster here: median weighted degree-3/4 cost of 256 regions
# after 12 / 20 / 30 iterations: damping 1e-3: 0.093 / 0.041 / 0.027; 0.1 with floor 1e-2:
# 0.052 / 0.028 / 0.020 (so 20 iterations now fit as well as 30 did). Each iteration's KKT solve
# (~62 x 62 per region, LAPACK gesv) is ~40 us of the ~100 us a region-iteration costs; float32
# solves were no faster. Stopping regions that are inside their box once a step gains < 1%
# (LM_STALL) leaves the fit as it was (RMS of the degree 3-4 residuals 0.0495 -> 0.0497).
LM_ITERS = 20           # LM iterations per region (each: one Jacobian + one KKT solve)
LM_LAMBDA = (0.1, 1e-2)  # LM damping: start, floor
LM_STALL = 1e-2         # a region inside its box stops when a step gains less than this fraction
KMEANS_ITERS = 8        # Lloyd iterations for the start
SAMPLE_CAP = 24         # at most SAMPLE_CAP * M sampled rows feed the k-means start
DEG_WEIGHT = {2: 3.0, 3: 1.0, 4: 0.5}  # degree-2 entries only in "diag" mode (cross moments)
START = "kmeans"         # "kmeans": centroids + cluster sizes; "rows": m sampled rows, equal weights
RELATIVE_WEIGHTS = True  # divide a moment's residual by sqrt(max(1, |target|)) (heavy tails)
BOX_PENALTY = 3.0       # weight of the hinge residuals for leaving the box, in u units
BOX_MARGIN = 1e-2       # the hinge starts this fraction of the span inside the box
MOMENT_CAP = "paper"     # "factor": up to MAX_RESID_FACTOR residuals per unknown; "paper": K >= M (d + 1)
MAX_RESID_FACTOR = 2.0  # at most this many moment residuals per unknown (d = 16: subset)
PHI_RANGE = 40.0        # log-weights stay within PHI_RANGE of the largest (no underflow)
EXACT_TOL = 1e-11       # max |degree <= 2 residual| in local units accepted as exact
BOX_SLACK = 1e-12       # u-unit excursion beyond the box repaired by clipping
PROJECT_ITERS = 60      # bounded Gauss-Newton steps (stage 2)
LP_ROUNDS = 30          # column-generation rounds
# Simplex iterations per LP. HiGHS stalled (did not return in 10+ minutes) on one 45 x 810 LP
# of a nycflights13 region, so the flights squash never finished; the other 95 LPs of that run
# needed at most 311 iterations. An iteration cap (deterministic, unlike a time limit) ends the
# round as an unsolved LP (the best earlier support is kept): that run then took 15 s.
LP_MAXITER = 5000
CHUNK = 256             # regions per vectorised batch
THREADS = min(2, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- monomials

@functools.lru_cache(maxsize=None)
def _triu(d: int) -> tuple[np.ndarray, np.ndarray]:
    """np.triu_indices(d), computed once per d (it was 8% of Generate's time, called per batch)."""
    j, k = np.triu_indices(d)
    j.setflags(write=False)
    k.setflags(write=False)
    return j, k


@functools.lru_cache(maxsize=None)
def degree_exponents(d: int, degree: int) -> list[tuple[int, ...]]:
    """All exponent vectors of total degree exactly ``degree``: pure powers first, then fewer
    distinct variables first (the order in which moments are kept when they are capped)."""
    out = []
    for combo in itertools.combinations_with_replacement(range(d), degree):  # multisets, not 5^d tuples
        e = [0] * d
        for j in combo:
            e[j] += 1
        out.append(tuple(e))
    return sorted(out, key=lambda e: (sum(1 for p in e if p), tuple(-p for p in e)))


@dataclass(frozen=True)
class Monomials:
    """Evaluate a list of monomials prod_j y_j^e_j as products of earlier ones (closure order)."""

    exps: np.ndarray    # (K, d)
    parent: np.ndarray  # (L,) closure: monomial i = monomial parent[i] * y[var[i]]
    var: np.ndarray
    used: np.ndarray    # (K,) positions of exps in the closure
    levels: tuple
    grad_src: np.ndarray  # (K, d) closure position of e_k - unit_j (0 where e_kj = 0)
    grad_mul: np.ndarray  # (K, d) e_kj

    @classmethod
    def build(cls, exps: np.ndarray) -> "Monomials":
        exps = np.asarray(exps, dtype=np.int64)
        k, d = exps.shape
        top = int(exps.sum(axis=1).max()) if k else 0
        closure = [(0,) * d] + [e for t in range(1, top + 1) for e in degree_exponents(d, t)]
        pos = {e: i for i, e in enumerate(closure)}
        parent = np.zeros(len(closure), dtype=np.int64)
        var = np.zeros(len(closure), dtype=np.int64)
        for i, e in enumerate(closure[1:], start=1):
            j = max(jj for jj in range(d) if e[jj])
            prev = list(e)
            prev[j] -= 1
            parent[i], var[i] = pos[tuple(prev)], j
        deg = np.array([sum(e) for e in closure])
        levels = tuple((int(np.searchsorted(deg, t)), int(np.searchsorted(deg, t, side="right")))
                       for t in range(1, top + 1))
        used = np.array([pos[tuple(int(v) for v in e)] for e in exps], dtype=np.int64)
        src = np.zeros((k, d), dtype=np.int64)
        for a, e in enumerate(exps):
            for j in range(d):
                if e[j]:
                    prev = [int(v) for v in e]
                    prev[j] -= 1
                    src[a, j] = pos[tuple(prev)]
        return cls(exps, parent, var, used, levels, src, exps.astype(float))

    def _closure(self, y: np.ndarray) -> np.ndarray:
        yt = np.moveaxis(y, -1, 0)
        allf = np.empty((len(self.parent),) + yt.shape[1:])
        allf[0] = 1.0
        for a, b in self.levels:
            np.multiply(allf[self.parent[a:b]], yt[self.var[a:b]], out=allf[a:b])
        return allf

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """y (..., m, d) -> monomials (..., m, K)."""
        return np.moveaxis(self._closure(y)[self.used], 0, -1)

    def with_grad(self, y: np.ndarray):
        """Monomials f (..., m, K) and their gradients g (..., m, K, d): d f_k / d y_j =
        e_kj * monomial(e_k - unit_j), read off the closure."""
        allf = self._closure(y)
        f = np.moveaxis(allf[self.used], 0, -1)
        g = allf[self.grad_src] * self.grad_mul[(...,) + (None,) * (y.ndim - 1)]  # (K, d, ..., m)
        return f, np.moveaxis(g, (0, 1), (-2, -1))


# ----------------------------------------------------------------------------- per-region problem

@dataclass
class Region:
    """One region in local units u = (x - mean) / sd over its active columns."""

    idx: int
    n: int
    m: int                 # points to use (after bumps)
    act: np.ndarray        # active column indices
    lo: np.ndarray         # (d,) box in u units
    hi: np.ndarray
    R: np.ndarray          # (d, d) target E[u u^T] (correlation)
    P: np.ndarray          # (r, d): R = P^T P
    full: bool             # match the whole covariance (else means and variances)
    hexps: list            # fitted higher moments (exponent tuples over active columns)
    htarget: np.ndarray    # their targets
    hweight: np.ndarray    # residual weights
    sample: np.ndarray     # (k, d) sampled rows in u units (clipped into the box)
    complete: bool         # the sample holds all n rows
    raw: np.ndarray | None = None  # the sampled rows, raw scale (emitted as-is by "rows")
    floor: np.ndarray | None = None  # (d,) rounding floor of each column in sd units


def _to_local(x, c, s, sd):
    """(x - c) / s / sd without overflow: the raw difference where it is finite (exact for
    near-constant columns), else the difference of the scaled values."""
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.subtract(x, c)
        u = diff / s / sd
        alt = x / s / sd - c / s / sd
    return np.where(np.isfinite(diff), u, alt)


def _floor(lo, hi, s, sd):
    """Rounding floor of a column in local (sd) units: raw values, and therefore the given mean,
    are only known to a few ulp of max(|lo|, |hi|). For near-constant columns (sd below ~1e-7 of
    |mean|) this exceeds 1e-9 sd, and the given moments may be inconsistent with the box at that
    level; the solver then accepts errors up to this floor (and so does the checker)."""
    return 8 * np.finfo(float).eps * np.maximum(np.abs(lo), np.abs(hi)) / s / sd


def _moment_plan(d: int, full: bool, mr: int, rank: int, with_higher: bool) -> tuple[list, np.ndarray, int]:
    """The candidate moments a region of ``d`` active columns fits, their degrees and how many
    of them it keeps: lowest orders first until K >= M (d + 1) as in the paper (MOMENT_CAP)."""
    if not with_higher:
        return [], np.zeros(0, dtype=int), 0
    cands = [e for t in (3, 4) for e in degree_exponents(d, t)]
    if not full:  # cross moments of degree 2 are not exact then: fit them as well
        cands = [e for e in degree_exponents(d, 2) if max(e) == 1] + cands
    if MOMENT_CAP == "paper":
        k2 = d + d * (d + 1) // 2 if full else 2 * d
        cap = max(mr * (d + 1) - k2, d)
    else:
        cap = max(int(MAX_RESID_FACTOR * mr * (rank + 1)), 3 * d)
    return cands, np.array([sum(e) for e in cands]), cap


def prepare(n, lo, hi, mean, cov, higher, m, samples, scale=None):
    """Split the input into per-region local problems and the raw-scale facts needed to emit
    points. Returns (regions, constant values (R, d), sd (R, d), center (R, d), scale (d,)).

    Vectorised over the regions that share their active columns (one eigen-decomposition call
    per pattern, not per region): at 3,573 regions this took 2.2 s region by region, 0.2 s so.
    """
    n = np.asarray(n, dtype=np.int64)
    lo, hi, mean = (np.asarray(a, dtype=float) for a in (lo, hi, mean))
    cov = np.asarray(cov, dtype=float)
    nreg, dfull = mean.shape
    s = np.ones(dfull) if scale is None else np.asarray(scale, dtype=float)
    # cov is Cov(x / s); sd on the raw scale would overflow beyond 1e154, so keep sd / s
    var = np.einsum("rjj->rj", cov)
    sd_s = np.sqrt(np.maximum(var, 0.0))
    center = np.clip(mean, lo, hi)
    active = (hi > lo) & (sd_s > 0) & np.isfinite(sd_s)
    regions: list = [None] * nreg
    patterns: dict = {}
    for r, key in enumerate(map(bytes, np.packbits(active, axis=1))):
        patterns.setdefault(key, []).append(r)
    for rows in patterns.values():
        idx = np.array(rows)
        act = np.flatnonzero(active[idx[0]])
        d = len(act)
        if d == 0:
            for r in rows:
                regions[r] = Region(r, int(n[r]), 1, act, *(np.empty(0),) * 2, np.empty((0, 0)),
                                    np.empty((0, 0)), True, [], np.empty(0), np.empty(0),
                                    np.empty((0, 0)), False)
            continue
        sdr = sd_s[np.ix_(idx, act)]
        c_a, s_a = center[np.ix_(idx, act)], s[act]
        u_lo = np.minimum(_to_local(lo[np.ix_(idx, act)], c_a, s_a, sdr), 0.0)
        u_hi = np.maximum(_to_local(hi[np.ix_(idx, act)], c_a, s_a, sdr), 0.0)
        R = cov[idx][:, act][:, :, act] / (sdr[:, :, None] * sdr[:, None, :])
        R = 0.5 * (R + R.transpose(0, 2, 1))
        R[:, np.arange(d), np.arange(d)] = 1.0
        fl = _floor(lo[np.ix_(idx, act)], hi[np.ix_(idx, act)], s_a, sdr)
        # Bhatia-Davis: var <= (mean - lo)(hi - mean), i.e. 1 <= -u_lo u_hi. Rounding of a
        # near-constant column's mean can break it by up to its floor; then no exact solution
        # exists, so shrink that column's target variance onto the bound (an error < its floor).
        bd = -u_lo * u_hi
        c = np.where((bd < 1) & (1 - bd <= 4 * fl + 1e-12), np.sqrt(np.clip(bd, 0, 1)), 1.0)
        R = R * (c[:, :, None] * c[:, None, :])
        vals, vecs = np.linalg.eigh(R)
        keep = vals > 1e-11 * vals.max(axis=1, keepdims=True)
        rank = keep.sum(axis=1)
        mr = np.minimum(np.maximum(np.asarray(m, dtype=np.int64)[idx], 1), n[idx])
        mr = np.where(mr == 1, np.minimum(2, n[idx]), mr)  # one point cannot carry a variance
        full = mr >= rank + 1
        plans: dict = {}  # (full, m, rank) -> candidates, their targets for every region of the pattern
        for b, r in enumerate(rows):
            key = (bool(full[b]), int(mr[b]), int(rank[b]) if MOMENT_CAP != "paper" else 0)
            if key not in plans:
                cands, deg, cap = _moment_plan(d, *key, bool(higher))
                plans[key] = (cands, deg, cap, _targets(cands, deg, act, dfull, higher, idx, R))
            cands, deg, cap, T = plans[key]
            ok = np.flatnonzero(np.isfinite(T[b]))[:cap]
            t = T[b, ok]
            w = np.array([DEG_WEIGHT[2], DEG_WEIGHT[3], DEG_WEIGHT[4]])[deg[ok] - 2] if len(ok) else np.zeros(0)
            if RELATIVE_WEIGHTS:
                w = w / np.sqrt(np.maximum(1.0, np.abs(t)))
            hexps = cands[:len(ok)] if len(ok) and ok[-1] == len(ok) - 1 else [cands[i] for i in ok]
            P = (vecs[b][:, keep[b]] * np.sqrt(vals[b][keep[b]])).T  # (rank, d): R = P^T P
            smp = np.asarray(samples[r], dtype=float).reshape(-1, dfull) if len(samples[r]) else np.empty((0, dfull))
            k = len(smp)
            su = np.clip(_to_local(smp[:, act], c_a[b], s_a, sdr[b]), u_lo[b], u_hi[b]) if k else np.empty((0, d))
            regions[r] = Region(r, int(n[r]), int(mr[b]), act, u_lo[b], u_hi[b], R[b], P, bool(full[b]), hexps,
                                t, w, su, k >= n[r], smp, fl[b])
    return regions, center, sd_s, s


def _targets(cands: list, deg: np.ndarray, act: np.ndarray, dfull: int, higher: dict, idx: np.ndarray,
             R: np.ndarray) -> np.ndarray:
    """Targets (regions of ``idx``, candidates) of the candidate moments: degree 2 from the
    correlations ``R``, higher ones from ``higher`` (NaN where not given)."""
    T = np.full((len(idx), len(cands)), np.nan)
    for i, (e, dg) in enumerate(zip(cands, deg)):
        if dg == 2:
            j, k = np.flatnonzero(e)
            T[:, i] = R[:, j, k]
        else:
            full_e = [0] * dfull
            for j, p in zip(act, e):
                full_e[j] = int(p)
            v = higher.get(tuple(full_e))
            if v is not None:
                T[:, i] = np.asarray(v, dtype=float)[idx]
    return T


# ----------------------------------------------------------------------------- batched pieces

def _weights(phi: np.ndarray) -> np.ndarray:
    """Positive weights summing to 1 from log-weights, clamped so none underflows."""
    p = np.maximum(phi, phi.max(axis=-1, keepdims=True) - PHI_RANGE)
    e = np.exp(p - p.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _chol_whiten(xc: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Return xc L^{-T} where L L^T = sum_i pi_i xc_i xc_i^T (weighted covariance), written out
    as loops over the (small) dimension so it vectorises over any batch shape."""
    r = xc.shape[-1]
    S = np.einsum("...i,...ij,...ik->...jk", pi, xc, xc)
    tr = np.einsum("...jj->...", S)[..., None, None]
    S = S + (1e-15 * tr + 1e-300) * np.eye(r)
    L = np.zeros_like(S)
    for j in range(r):
        v = S[..., j, j] - (L[..., j, :j] ** 2).sum(-1)
        L[..., j, j] = np.sqrt(np.maximum(v, 1e-300))
        for i in range(j + 1, r):
            L[..., i, j] = (S[..., i, j] - (L[..., i, :j] * L[..., j, :j]).sum(-1)) / L[..., j, j]
    z = np.empty_like(xc)
    for j in range(r):  # forward substitution L z^T = xc^T, row by row
        acc = xc[..., j]
        if j:
            acc = acc - np.einsum("...k,...ik->...i", L[..., j, :j], z[..., :j])
        z[..., j] = acc / L[..., j, j][..., None]
    return z


def retract(x: np.ndarray, phi: np.ndarray, P: np.ndarray, full: bool):
    """Map free points x (..., m, r) and log-weights to points with exact degree <= 2 moments.

    full: y = whiten(x - mean) @ P (weighted mean 0, covariance P^T P = R exactly).
    diag: x lives in u space (r == d); each column is centred and scaled to variance 1.
    """
    pi = _weights(phi)
    mu = np.einsum("...i,...ij->...j", pi, x)
    xc = x - mu[..., None, :]
    if full:
        return np.einsum("...ik,...kj->...ij", _chol_whiten(xc, pi), P), pi
    var = np.einsum("...i,...ij->...j", pi, xc * xc)
    return xc / np.sqrt(np.maximum(var, 1e-300))[..., None, :], pi


@dataclass
class Batch:
    """B regions with equal (m, rank, d, mode, number of fitted moments), stacked."""

    regs: list
    m: int
    full: bool
    P: np.ndarray       # (B, r, d)
    lo: np.ndarray      # (B, d)
    hi: np.ndarray
    mono: Monomials | None
    target: np.ndarray  # (B, K)
    weight: np.ndarray  # (B, K)


def make_batch(regs: list) -> Batch:
    r0 = regs[0]
    P = np.stack([g.P if g.full else np.diag(np.sqrt(np.diag(g.R))) for g in regs])  # u = v P
    K = len(r0.hexps)
    mono = _cached_monomials(tuple(r0.hexps)) if K else None
    if K:
        # regions in one batch share the exponent list (same d, mode and cap) except when a
        # target was NaN: those regions were grouped apart by their exponent list
        target = np.stack([g.htarget for g in regs])
        weight = np.stack([g.hweight for g in regs])
    else:
        target = weight = np.zeros((len(regs), 0))
    return Batch(regs, r0.m, r0.full, P, np.stack([g.lo for g in regs]), np.stack([g.hi for g in regs]),
                 mono, target, weight)


# ----------------------------------------------------------------------------- start: k-means

def kmeans_start(batch: Batch, rng: np.random.Generator):
    """Weighted k-means (k-means++ seeding, Lloyd) of each region's sampled rows in whitened
    coordinates; returns free points x (B, m, r) and log-weights (cluster sizes). Missing
    sample rows are replaced by standard-normal draws (whitened units) with small weight."""
    B, m = len(batch.regs), batch.m
    r = batch.P.shape[1]
    cap = SAMPLE_CAP * m
    kmax = max(min(max(len(g.sample) for g in batch.regs), cap), m)
    pts = np.zeros((B, kmax, r))
    msk = np.zeros((B, kmax))
    to_v = np.linalg.pinv(batch.P)  # (B, d, r): u = v P, least squares
    for b, g in enumerate(batch.regs):
        s = g.sample
        if len(s) > cap:
            s = s[rng.choice(len(s), cap, replace=False)]
        pts[b, :len(s)] = s @ to_v[b]
        msk[b, :len(s)] = 1.0
    nvalid = msk.sum(1)
    # k-means++ seeding (vectorised over the batch)
    cent = np.zeros((B, m, r))
    first = np.array([rng.integers(0, max(int(k), 1)) for k in nvalid])
    cent[:, 0] = pts[np.arange(B), first]
    dmin = ((pts - cent[:, :1]) ** 2).sum(-1)
    for c in range(1, m):
        p = dmin * msk
        tot = p.sum(1, keepdims=True)
        p = np.where(tot > 0, p / np.where(tot > 0, tot, 1), msk / np.maximum(nvalid[:, None], 1))
        u = rng.random(B)[:, None]
        pick = np.minimum((np.cumsum(p, 1) < u).sum(1), kmax - 1)
        cent[:, c] = pts[np.arange(B), pick]
        dmin = np.minimum(dmin, ((pts - cent[:, c:c + 1]) ** 2).sum(-1))
    size = np.zeros((B, m))
    if START == "rows":  # alternative start: m distinct sampled rows, equal weights
        order = np.argsort(rng.random((B, kmax)) + (1 - msk) * 2, axis=1)[:, :m]
        cent = np.take_along_axis(pts, order[..., None], axis=1)
        size = np.take_along_axis(msk, order, axis=1)
    for _ in range(KMEANS_ITERS if START == "kmeans" else 0):
        dist = ((pts[:, :, None, :] - cent[:, None, :, :]) ** 2).sum(-1)
        lab = dist.argmin(-1)
        onehot = (lab[..., None] == np.arange(m)) * msk[..., None]
        size = onehot.sum(1)
        sums = np.einsum("bkc,bkj->bcj", onehot, pts)
        cent = np.where(size[..., None] > 0, sums / np.maximum(size, 1)[..., None], cent)
    # clusters with no rows (few or duplicated sample rows): fresh draws, light weight
    empty = size == 0
    if empty.any():
        cent[empty] = rng.standard_normal((int(empty.sum()), r))
        size = np.where(empty, 0.5, size)
    return cent, np.log(size)


# ----------------------------------------------------------------------------- stage 1: LM

def _low_jac(v: np.ndarray, pi: np.ndarray, full: bool):
    """Constraint Jacobian of the degree <= 2 moments of points v (B, m, r) with weights
    softmax(phi): (B, K2, m * r + m), columns ordered (points, log-weights)."""
    B, m, r = v.shape
    F = low_features(v, full)                                  # (B, m, K2)
    K2 = F.shape[-1]
    Jv = np.zeros((B, K2, m, r))
    idx = np.arange(r)
    Jv[:, idx, :, idx] = pi[None, :, :].repeat(r, 0).transpose(0, 1, 2)
    if full:
        jj, kk = _triu(r)
        for a, (j, k) in enumerate(zip(jj, kk)):
            Jv[:, r + a, :, j] += pi * v[:, :, k]
            Jv[:, r + a, :, k] += pi * v[:, :, j]
    else:
        Jv[:, r + idx, :, idx] = (2 * pi * np.moveaxis(v, -1, 0))
    Jphi = np.einsum("bi,bik->bki", pi, F - np.einsum("bi,bik->bk", pi, F)[:, None, :])
    return np.concatenate([Jv.reshape(B, K2, m * r), Jphi], axis=2)


def lm_fit(batch: Batch, x: np.ndarray, phi: np.ndarray, iters: int):
    """Levenberg-Marquardt on the degree 3/4 residuals (+ box hinges) over points and
    log-weights, staying on the manifold of exact degree <= 2 moments: each step solves the
    damped Gauss-Newton problem in the tangent space (KKT system with the linearised
    degree <= 2 constraints), then the retraction removes the second-order drift.

    Full mode works in whitened coordinates v (u = v P, target covariance I); diag mode in
    standardised columns v (u = v P with P = diag(target sd), usually I).
    Analytic Jacobians: moments are polynomials in the points and linear in the weights."""
    B, m, r = x.shape
    full = batch.full
    P = batch.P                                                # (B, r, d)
    rho2 = BOX_PENALTY ** 2
    nz = m * r + m

    def retr(v, ph):
        return retract(v, ph, np.eye(r), True) if full else retract(v, ph, None, False)

    def evaluate(v, ph, sel, grad):
        """Cost and (optionally) gradient / Gauss-Newton matrix at exact points v."""
        Pb, lo, hi, tg, wt = P[sel], batch.lo[sel], batch.hi[sel], batch.target[sel], batch.weight[sel]
        pi = _weights(ph)
        u = np.einsum("bia,baj->bij", v, Pb)
        margin = BOX_MARGIN * (hi - lo)[:, None, :]  # aim slightly inside: the end test is strict
        over = np.maximum(u - hi[:, None, :] + margin, 0.0) - np.maximum(lo[:, None, :] + margin - u, 0.0)
        cost = rho2 * (over ** 2).sum((1, 2))
        if not grad:
            if batch.mono is not None:
                res = (np.einsum("bi,bik->bk", pi, batch.mono(u)) - tg) * wt
                cost = cost + (res ** 2).sum(1)
            return cost, ~over.any(axis=(1, 2))
        f, gu = batch.mono.with_grad(u)                          # (b, m, K), (b, m, K, d)
        mom = np.einsum("bi,bik->bk", pi, f)
        res = (mom - tg) * wt
        cost = cost + (res ** 2).sum(1)
        gv = (gu @ Pb.transpose(0, 2, 1)[:, None]).transpose(0, 2, 1, 3)  # d f / d v: (b, K, m, r)
        Jv = gv * (pi[:, None, :, None] * wt[:, :, None, None])
        Jphi = (f - mom[:, None, :]).transpose(0, 2, 1) * pi[:, None, :] * wt[:, :, None]
        J = np.concatenate([Jv.reshape(len(sel), -1, m * r), Jphi], axis=2)
        H = J.transpose(0, 2, 1) @ J
        gr = np.einsum("bkp,bk->bp", J, res)
        hit = np.flatnonzero((over != 0).any(axis=(1, 2)))       # box hinge: block per point
        if hit.size:
            act = (over[hit] != 0).astype(float)
            Pa = Pb[hit]
            Hp = rho2 * ((Pa[:, None] * act[:, :, None, :]) @ Pa.transpose(0, 2, 1)[:, None])  # (h, m, r, r)
            gp = rho2 * np.einsum("bij,baj->bia", over[hit], Pa)
            for i in range(m):
                sl = slice(i * r, (i + 1) * r)
                H[hit, sl, sl] += Hp[:, i]
            gr[hit, :m * r] += gp.reshape(len(hit), m * r)
        return cost, H, gr

    v, pi = retr(x, phi)
    ph = np.log(pi)
    alls = np.arange(B)
    cost, _ = evaluate(v, ph, alls, False)
    lam = np.full(B, LM_LAMBDA[0])
    active = alls.copy()
    K2 = low_features(v[:1, :1], full).shape[-1]
    base = np.zeros((B, nz + K2, nz + K2))  # undamped KKT matrix [[H, C^T], [C, 0]] at each region's point
    dg = np.empty((B, nz))  # Marquardt scaling: diag(H) plus a floor
    rhs = np.zeros((B, nz + K2))
    stale = np.ones(B, dtype=bool)
    diag = np.arange(nz)
    for _ in range(iters):
        if active.size == 0:
            break
        fresh = active[stale[active]]
        if fresh.size:
            _, H, g = evaluate(v[fresh], ph[fresh], fresh, True)
            C = _low_jac(v[fresh], _weights(ph[fresh]), full)
            base[fresh, :nz, :nz] = H
            base[fresh, nz:, :nz] = C
            base[fresh, :nz, nz:] = C.transpose(0, 2, 1)
            h = np.einsum("bii->bi", H)
            dg[fresh] = h + 1e-3 * h.mean(1, keepdims=True)
            rhs[fresh, :nz] = -g
            stale[fresh] = False
        kkt = base[active]
        kkt[:, diag, diag] += lam[active, None] * dg[active] + 1e-10
        try:
            step = np.linalg.solve(kkt, rhs[active][..., None])[..., 0][:, :nz]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(k_, r_, rcond=None)[0] for k_, r_ in zip(kkt, rhs[active])])[:, :nz]
        vn = v[active] + step[:, :m * r].reshape(-1, m, r)
        phn = ph[active] + step[:, m * r:]
        vn, pin = retr(vn, phn)
        phn = np.log(pin)
        cn, inside = evaluate(vn, phn, active, False)
        ok = np.isfinite(cn) & (cn < cost[active])
        gain = cost[active] - cn
        ia = active[ok]
        v[ia], ph[ia] = vn[ok], phn[ok]
        stale[ia] = True
        lam[ia] = np.maximum(lam[ia] / 3, LM_LAMBDA[1])
        lam[active[~ok]] *= 6
        done = (ok & inside & (gain < LM_STALL * cost[active])) | (lam[active] > 1e6) | (cost[active] < 1e-24)
        cost[ia] = cn[ok]
        active = active[~done]
    return v, ph


# ----------------------------------------------------------------------------- low-moment maps

def low_features(y: np.ndarray, full: bool) -> np.ndarray:
    """Degree <= 2 constraint features of points y (..., m, d): [u_j, u_j u_k (j <= k)] or [u_j, u_j^2]."""
    d = y.shape[-1]
    if full:
        j, k = _triu(d)
        return np.concatenate([y, y[..., j] * y[..., k]], axis=-1)
    return np.concatenate([y, y * y], axis=-1)


def low_target(g: Region) -> np.ndarray:
    d = len(g.act)
    if g.full:
        j, k = _triu(d)
        return np.concatenate([np.zeros(d), g.R[j, k]])
    return np.concatenate([np.zeros(d), np.diag(g.R)])


def low_tolerance(g: Region) -> np.ndarray:
    """Per-constraint tolerance: EXACT_TOL plus the columns' rounding floors."""
    f = g.floor if g.floor is not None else np.zeros(len(g.act))
    d = len(g.act)
    if g.full:
        j, k = _triu(d)
        return EXACT_TOL + np.concatenate([f, f[j] + f[k]])
    return EXACT_TOL + np.concatenate([f, 2 * f])


def low_error(y: np.ndarray, pi: np.ndarray, g: Region) -> float:
    """Max |degree <= 2 moment error| relative to its tolerance (<= 1: accepted as exact); the
    solver's own acceptance test, mirrored independently by the benchmark's checker."""
    return float((np.abs(pi @ low_features(y, g.full) - low_target(g)) / low_tolerance(g)).max())


# ----------------------------------------------------------------------------- stage 2: projection

def project(y: np.ndarray, pi: np.ndarray, g: Region, iters: int = PROJECT_ITERS):
    """Bounded Gauss-Newton: minimum-norm steps on the degree <= 2 residuals over the points
    (kept in the box; coordinates on a bound whose step points outward are frozen) and the
    log-weights. Returns (y, pi, error)."""
    m, d = y.shape
    lo, hi = g.lo, g.hi
    y = np.clip(y, lo, hi)
    phi = np.log(np.maximum(pi, 1e-300))
    tgt = low_target(g)
    full = g.full
    if full:
        jj, kk = _triu(d)

    def resid(y, phi):
        p = _weights(phi)
        return p @ low_features(y, full) - tgt, p

    r, p = resid(y, phi)
    err = np.abs(r).max()
    for _ in range(iters):
        if err < 1e-14:
            break
        # Jacobian of the features' weighted mean wrt y_ij and phi_i
        F = low_features(y, full)  # (m, K)
        K = F.shape[1]
        Jy = np.zeros((K, m, d))
        for j in range(d):
            Jy[j, :, j] = p
        if full:
            for a, (j, k) in enumerate(zip(jj, kk)):
                Jy[d + a, :, j] += p * y[:, k]
                Jy[d + a, :, k] += p * y[:, j]
        else:
            for j in range(d):
                Jy[d + j, :, j] = 2 * p * y[:, j]
        Jphi = (p[:, None] * (F - p @ F)).T  # (K, m)
        Jy = Jy.reshape(K, m * d)
        free = np.ones(m * d, dtype=bool)
        flat_y = y.reshape(-1)
        lo_f, hi_f = np.tile(lo, m), np.tile(hi, m)
        for _pass in range(4):
            nfree = int(free.sum())
            J = np.concatenate([Jy[:, free], Jphi], axis=1)
            JJ = J @ J.T
            JJ[np.diag_indices(K)] += 1e-12 * np.trace(JJ) / K + 1e-300
            step = -J.T @ np.linalg.solve(JJ, r)
            sy = np.zeros(m * d)
            sy[free] = step[:nfree]
            sphi = step[nfree:]
            out = free & (((flat_y <= lo_f) & (sy < 0)) | ((flat_y >= hi_f) & (sy > 0)))
            if not out.any():
                break
            free &= ~out
        t = 1.0
        for _h in range(12):
            yn = np.clip(flat_y + t * sy, lo_f, hi_f).reshape(m, d)
            rn, pn = resid(yn, phi + t * sphi)
            en = np.abs(rn).max()
            if en < err:
                break
            t *= 0.5
        else:
            break
        y, phi, r, p, err = yn, phi + t * sphi, rn, pn, en
    return y, p, low_error(y, p, g)


# ----------------------------------------------------------------------------- stage 3: LP

def _coord_ascent(q0, ql, Q, lo, hi, starts, sweeps=6):
    """Maximise q0 + ql.v + v^T Q v (Q symmetric) over the box by exact coordinate ascent."""
    v = np.clip(starts.copy(), lo, hi)
    d = len(lo)
    for _ in range(sweeps):
        for j in range(d):
            # value as a function of v_j: a v_j^2 + b v_j + const
            a = Q[j, j]
            b = ql[j] + 2 * (v @ Q[:, j] - v[:, j] * Q[j, j])
            cand = [np.full(len(v), lo[j]), np.full(len(v), hi[j])]
            if a < 0:
                cand.append(np.clip(-b / (2 * a), lo[j], hi[j]))
            vals = np.stack([a * c * c + b * c for c in cand])
            v[:, j] = np.stack(cand)[vals.argmax(0), np.arange(len(v))]
    return v, q0 + v @ ql + np.einsum("ij,jk,ik->i", v, Q, v)


def lp_solve(g: Region, extra_pts: list, rng: np.random.Generator):
    """Exact degree <= 2 moments as a linear program in the weights of candidate points, with
    column generation over the box. Returns (y, pi, error) with the support (<= K+1 points)."""
    from scipy.optimize import linprog  # noqa: PLC0415 - scipy.optimize costs ~1 s to import; rarely needed

    d = len(g.act)
    lo, hi = g.lo, g.hi
    cand = [g.sample] + [np.clip(p, lo, hi) for p in extra_pts]
    cand.append(np.zeros((1, d)))
    axis = np.zeros((2 * d, d))
    axis[np.arange(d), np.arange(d)] = lo
    axis[d + np.arange(d), np.arange(d)] = hi
    cand.append(axis)
    if d <= 8:
        cand.append(np.array(list(itertools.product(*zip(lo, hi)))))
    C = np.unique(np.concatenate(cand, axis=0), axis=0)
    b = np.concatenate([[1.0], low_target(g)])
    feats = lambda v: np.concatenate([np.ones((len(v), 1)), low_features(v, g.full)], axis=1)  # noqa: E731
    if g.full:
        jj, kk = _triu(d)
    A = feats(C)
    best = None
    for _round in range(LP_ROUNDS):
        ne = A.shape[1]
        nc = len(C)
        c = np.concatenate([np.zeros(nc), np.ones(2 * ne)])
        Aeq = np.concatenate([A.T, np.eye(ne), -np.eye(ne)], axis=1)
        res = linprog(c, A_eq=Aeq, b_eq=b, bounds=(0, None), method="highs", options={"maxiter": LP_MAXITER})
        if res.status != 0:
            break
        pi = res.x[:nc]
        best = (C, pi)
        if res.fun < 1e-10:
            break
        yd = res.eqlin.marginals  # dual of the equalities; new column improves if y.a(v) > 0
        q0, ql = yd[0], yd[1:1 + d]
        Q = np.zeros((d, d))
        if g.full:
            qv = yd[1 + d:]
            for a, (j, k) in enumerate(zip(jj, kk)):
                if j == k:
                    Q[j, j] += qv[a]
                else:
                    Q[j, k] += qv[a] / 2
                    Q[k, j] += qv[a] / 2
        else:
            Q[np.diag_indices(d)] = yd[1 + d:]
        starts = np.concatenate([C[np.argsort(-(A @ yd))[:16]], rng.uniform(lo, hi, (16, d))])
        v, val = _coord_ascent(q0, ql, Q, lo, hi, starts)
        newv = v[val > 1e-12]
        if len(newv) == 0:
            break
        C = np.concatenate([C, np.unique(newv, axis=0)])
        A = feats(C)
    if best is None:
        return None
    C, pi = best
    return _polish(C, pi, A[:len(C)] if len(A) >= len(C) else feats(C), b, g)


def _polish(C, pi, A, b, g):
    """Least-squares re-solve on the LP support so the equalities hold to rounding, dropping
    points whose weight turns non-positive."""
    supp = np.flatnonzero(pi > 1e-14 * pi.max())
    for _ in range(10):
        As = A[supp].T
        w, *_ = np.linalg.lstsq(As, b, rcond=None)
        w = w + np.linalg.lstsq(As, b - As @ w, rcond=None)[0]  # one refinement step
        if (w > 0).all():
            break
        supp = supp[w > 0]
    y, w = C[supp], np.maximum(w, 1e-300)
    w = w / w.sum()
    return y, w, low_error(y, w, g)


# ----------------------------------------------------------------------------- driver

@dataclass
class Result:
    y: np.ndarray
    pi: np.ndarray
    method: str
    err2: float
    rms34: float = float("nan")


def _drop_light(y: np.ndarray, pi: np.ndarray, g: Region, floor: float = 1e-8):
    """Remove points whose weight fell below ``floor`` (the projection can starve a point) and
    re-project; keep the original if the smaller set is not exact."""
    keep = pi >= floor * pi.max()
    if keep.all() or keep.sum() < 2:
        return y, pi
    y2, p2, e2 = project(y[keep], pi[keep] / pi[keep].sum(), g, 20)
    return (y2, p2) if e2 <= 1.0 else (y, pi)


@functools.lru_cache(maxsize=256)
def _cached_monomials(exps: tuple) -> Monomials:
    return Monomials.build(np.array(exps))


def _higher_rms_batch(regs: list, y: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """:func:`_higher_rms` of a batch of regions sharing their fitted moments: y (B, m, d)."""
    g = regs[0]
    sel = [i for i, e in enumerate(g.hexps) if sum(e) > 2]
    if not sel or y.shape[1] == 0:
        return np.full(len(regs), np.nan)
    mono = _cached_monomials(tuple(g.hexps[i] for i in sel))
    target = np.stack([r.htarget[sel] for r in regs])
    return np.sqrt(np.mean((np.einsum("bi,bik->bk", pi, mono(y)) - target) ** 2, axis=1))


def _low_error_batch(y: np.ndarray, pi: np.ndarray, regs: list) -> np.ndarray:
    """:func:`low_error` of a batch of regions with equal (d, mode): y (B, m, d)."""
    feats = np.einsum("bi,bik->bk", pi, low_features(y, regs[0].full))
    target = np.stack([low_target(g) for g in regs])
    tol = np.stack([low_tolerance(g) for g in regs])
    return (np.abs(feats - target) / tol).max(axis=1)


def _higher_rms(g: Region, y: np.ndarray, pi: np.ndarray) -> float:
    """RMS of the unweighted degree 3/4 residuals used in the fit (local units)."""
    sel = [i for i, e in enumerate(g.hexps) if sum(e) > 2]
    if not sel or len(y) == 0:
        return float("nan")
    mono = _cached_monomials(tuple(g.hexps[i] for i in sel))
    return float(np.sqrt(np.mean((pi @ mono(y) - g.htarget[sel]) ** 2)))


def _solve_chunk(regs: list, seed: int, key: tuple, iters: int = LM_ITERS) -> list:
    """Stages 1-5 for one chunk of regions sharing their batch key."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, *key])
    batch = make_batch(regs)
    x, phi = kmeans_start(batch, rng)
    if batch.mono is not None:
        x, phi = lm_fit(batch, x, phi, iters)
    r = x.shape[-1]
    y, pi = retract(x, phi, np.eye(r), True) if batch.full else retract(x, phi, None, False)
    y = np.einsum("bia,baj->bij", y, batch.P)  # whitened -> local units
    lo, hi = batch.lo[:, None, :], batch.hi[:, None, :]
    inside = (np.maximum(y - hi, lo - y).max(axis=(1, 2)) <= BOX_SLACK) & np.isfinite(y).all(axis=(1, 2))
    yc = np.clip(y, lo, hi)
    err = _low_error_batch(yc, pi, regs)
    rms = _higher_rms_batch(regs, yc, pi)
    out = []
    for b, g in enumerate(regs):
        yb, pb = y[b], pi[b]
        if inside[b] and err[b] <= 1.0:
            out.append(Result(yc[b], pb, "fit", float(err[b]), float(rms[b])))
            continue
        yp, pp, e = project(yb, pb, g)
        if e <= 1.0:
            out.append(Result(*_drop_light(yp, pp, g), "project", e))
            continue
        # The LP adds points as it needs them, so it matches the whole covariance even where the
        # requested points were too few for it: a table with at least d + 1 points in a region is
        # then exact in its covariance, as verify() checks.
        g = g if g.full else dataclasses.replace(g, full=True)
        lp = lp_solve(g, [yb, yp], rng)
        if lp is not None and lp[2] > 1.0:  # support found, equalities not yet tight:
            lp = project(lp[0], lp[1], g, 2 * PROJECT_ITERS)  # let the points move as well
        if lp is not None and lp[2] <= 1.0:
            out.append(Result(lp[0], lp[1], "lp", lp[2]))
            continue
        if g.complete:
            out.append(Result(g.sample, np.full(len(g.sample), 1.0 / len(g.sample)), "rows",
                              low_error(g.sample, np.full(len(g.sample), 1.0 / len(g.sample)), g)))
            continue
        cands = [(e, yp, pp)] + ([(lp[2], lp[0], lp[1])] if lp is not None else [])
        e, yb, pb = min(cands, key=lambda t: t[0])
        out.append(Result(yb, pb, "inexact", e))
    for g, res in zip(regs, out):
        if res.method != "fit":
            res.rms34 = _higher_rms(g, res.y, res.pi)
    return out


def solve(n, lo, hi, mean, cov, higher, m, samples, seed=0, scale=None, threads=None, iters=LM_ITERS,
          advance=None):
    """Weighted pseudo-points for every region (see the module docstring).

    Parameters
    ----------
    n : (R,) int, rows per region (>= 1)
    lo, hi : (R, d) per-region min / max (raw scale; lo == hi: constant in the region)
    mean : (R, d) exact region means
    cov : (R, d, d) exact population covariances of x / scale (scale defaults to 1; pass a
        column scale when |x| may exceed ~1e154, where raw covariances overflow)
    higher : dict exponent tuple (length d, total degree 3 or 4) -> (R,) central standardised
        moments E[prod ((x_j - mean_j) / sd_j)^e_j]; NaN where undefined; may be empty
    m : (R,) wanted points per region, 1 <= m_r <= n_r
    samples : list of R arrays (k_r, d) of sampled rows (raw scale), k_r may be 0
    seed : int; the output is a deterministic function of the inputs and the seed
    scale : optional (d,) positive column scales (see ``cov``)
    threads : solver threads (default: ``THREADS``); the output does not depend on it
    iters : Levenberg-Marquardt iterations per region
    advance : optional callable, told ``advance(k)`` when k more regions are solved (progress)

    Returns
    -------
    points : (P, d) raw-scale points, region by region
    weights : (P,) positive weights; they sum to n_r within region r
    region_of_point : (P,) region index of each point
    diag : dict of per-region arrays ("method", "n_points", "m_requested", "err2", "rms34")
        and "counts" (regions per method)
    """
    regions, center, sd_s, s = prepare(n, lo, hi, mean, cov, higher, m, samples, scale)
    nreg, dfull = center.shape
    results: list = [None] * nreg
    groups: dict = {}
    for g in regions:
        if len(g.act) == 0:
            results[g.idx] = Result(np.zeros((1, 0)), np.ones(1), "mean", 0.0)
        elif g.complete and g.m >= g.n:
            k = len(g.sample)
            results[g.idx] = Result(g.sample, np.full(k, 1.0 / k), "rows",
                                    low_error(g.sample, np.full(k, 1.0 / k), g))
        else:
            key = (g.m, g.P.shape[0] if g.full else -1, len(g.act), len(g.hexps), tuple(map(tuple, g.hexps)))
            groups.setdefault(key, []).append(g)
    jobs = []
    for gi, (key, regs) in enumerate(sorted(groups.items(), key=lambda kv: kv[0][:4])):
        for c0 in range(0, len(regs), CHUNK):
            jobs.append((regs[c0:c0 + CHUNK], (key[0], key[1] + 1, key[2], key[3], c0)))
    nthreads = THREADS if threads is None else threads
    tell = advance or (lambda _: None)
    tell(nreg - sum(len(regs) for regs, _ in jobs))
    with threadpool_limits(1):
        if nthreads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(nthreads) as pool:
                futures = [pool.submit(_solve_chunk, regs, seed, key, iters) for regs, key in jobs]
                size = {f: len(regs) for f, (regs, _) in zip(futures, jobs)}
                for f in as_completed(futures):  # progress in completion order, results in job order
                    tell(size[f])
                outs = [f.result() for f in futures]
        else:
            outs = []
            for regs, key in jobs:
                outs.append(_solve_chunk(regs, seed, key, iters))
                tell(len(regs))
    for (regs, _), out in zip(jobs, outs):
        for g, res in zip(regs, out):
            results[g.idx] = res
    # emit raw-scale points
    pts, wts, rid = [], [], []
    for g, res in zip(regions, results):
        k = len(res.pi)
        x = np.repeat(center[g.idx][None, :], k, axis=0)
        if len(g.act):
            a = g.act
            # x = center + s * sd * u, evaluated without forming s * sd (may overflow)
            xa = center[g.idx, a] + (sd_s[g.idx, a] * res.y) * s[a]
            x[:, a] = np.clip(xa, np.asarray(lo, float)[g.idx, a], np.asarray(hi, float)[g.idx, a])
        if res.method == "rows":  # the region's own rows, exactly as sampled
            x = g.raw.copy()
        w = res.pi / res.pi.sum() * g.n
        pts.append(x)
        wts.append(w)
        rid.append(np.full(k, g.idx))
    methods = np.array([r.method for r in results], dtype=object)
    diag = {
        "method": methods,
        "n_points": np.array([len(r.pi) for r in results]),
        "m_requested": np.asarray(m, dtype=np.int64),
        "err2": np.array([r.err2 for r in results]),
        "rms34": np.array([r.rms34 for r in results]),
        "counts": {k: int((methods == k).sum()) for k in ("mean", "fit", "project", "lp", "rows", "inexact")},
    }
    diag["more_points"] = diag["n_points"] > diag["m_requested"]
    return np.concatenate(pts), np.concatenate(wts), np.concatenate(rid), diag
