"""Pseudo-points of the LDS clusters: two per cluster along the direction that adds the most
information, and their calibration to a Newton step made with the full data's score.

**Why one mean point per cluster is not enough.** A cluster of rows i with design vectors x_i
(response fixed within a binomial cell) contributes sum_i [y x_i'theta - A(x_i'theta)] to the
log-likelihood, its mean point w [y xbar'theta - A(xbar'theta)]. The y-part is exact; the A-part
misses (Jensen) the within-cluster spread: the score by ~A'' W_c theta, the information by A'' W_c
(W_c = sum_i (x_i - xbar)(x_i - xbar)'). With M = 200 clusters over 18 cells of 5 continuous
variables a cluster is wide, so the squashed table's information falls well short of the full
data's in the directions the tree splits least (squashed SEs 1.75x the full ones), and its MLE
amplifies theta_0's error there: on paper_like(40k, seed=11), M = 200, squash seeds 0 / 1 / 2 gave
MSE 167 / 12.5 / 571 (a uniform sample: 291), errors up to 55 SE on x1 and x3. Which directions are
short depends on the sample, hence the seed sensitivity; even with theta_0 = the full MLE
(``init="mle"``) the score bias gave 3.9 / 64 / 3.5. At M = N/1000 on 40k rows (40 points, ~2
per cell) the table was degenerate (information in its weakest direction 1/2000 of the full
data's; MSE ~1e6).

**Two points per cluster** (``points=2``, the default; the tree gets M / 2 leaves, at least one
per cell). Each cluster's covariance Cov_c and box come from the tree sample's rows in its leaf
(>= 20 M rows for M / 2 leaves, so >= 40 rows a leaf; :func:`leaf_stats`), not from the pass: sums
of products in the GROUP BY cost ~25% more CPU per pass for 9 variables. A pair xbar +- R z
(R = Cov_c^(1/2), |z| = 1, weights w / 2) never spreads more than the cluster does in any
direction and adds information w A''(xbar'theta_0) (J R z)(J R z)' (J: the design expressions'
Jacobian in the variables, by finite differences at xbar, one small query). z is the top
eigenvector of R J' I^-1 J R, I the squashed table's information so far: the direction in which
the pair adds the most relative to what the table already has (greedy D-optimal design; clusters
in order of w x their largest within variance, I updated 20 times). Points are clipped to the box.
On paper_like(40k, seed=11), seed 0, squashed SEs / full SEs (geometric mean) at M = 200: one
mean point 1.75, these pairs 1.22, a pair along the within-cluster regression of x on eta_0 (two
Gauss nodes matching the mean, variance and skewness of eta_0, which makes the table's score at
theta_0 right to third order) 2.07; at M = 40: 8.5 / 1.47 / 8.0.

**Calibration** (``calibrate=True``, the default). The squash pass also sums the full data's score
S(theta_0) (p sums of the row residual times the design), so theta_1 = theta_0 + Sigma_0 S(theta_0)
(Sigma_0: the first estimate's covariance) is one Newton step over the full data made without
another pass: ILDS's next centre. The points are then calibrated: the smallest change
sum dw^2 / w + w dx' Cov_c^-1 dx (weights, and positions within the box) that keeps every cell's
total weight and makes the table's score at theta_1 zero, each weight kept >= 20% of its value and
>= 1 when it was (:func:`calibrate`). The squashed table's MLE for the model squashed for is then
theta_1; what is left is the chord step's error (1 - Sigma_0 I)(theta_0 - theta_full), which each
ILDS iteration multiplies again. Weights alone could not do it at M = 40 (floors bind: MSE 0.9 /
4980 / 25 for seeds 0 / 1 / 2 on paper_like(40k, seed=11)); with positions: 0.0009 / 0.0004 /
0.0005, largest weight change 17%. Without calibration the pairs' table keeps a Jensen bias in the
directions off eta_0 (MSE ~4 at M = 200, worse than ILDS on the mean points).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from ..sql.names import PREFIX as _P

FLOOR = 0.2  # calibration keeps every weight >= FLOOR x its value (and >= 1 when it was)
BATCHES = 20  # greedy direction choice: the table's information is updated this many times


def leaf_stats(leaf_of: np.ndarray, x: np.ndarray, nodes: np.ndarray, means: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each cluster's covariance (n x q x q, ddof 1) and box (n x q each) from the tree sample's rows in
    its leaf (``leaf_of``: the leaf of each sample row, ``x`` their quantitative variables, ``nodes``
    the clusters' leaf ids); the box is widened to hold the cluster's mean ``means``. Leaves with
    fewer than two sample rows get no spread."""
    n, q = means.shape
    srt = np.argsort(nodes, kind="stable")
    at = np.clip(np.searchsorted(nodes[srt], leaf_of), 0, max(n - 1, 0))
    keep = (n > 0) & (nodes[srt][at] == leaf_of) if n else np.zeros(len(leaf_of), bool)
    where = srt[at[keep]]
    order = np.argsort(where, kind="stable")
    where, x = where[order], x[keep][order]
    cnt = np.bincount(where, minlength=n).astype(float)
    s1 = np.zeros((n, q))
    s2 = np.zeros((n, q, q))
    if len(x):
        c = x - x.mean(axis=0)
        starts = np.flatnonzero(np.r_[True, where[1:] != where[:-1]])
        s1[where[starts]] = np.add.reduceat(c, starts, axis=0)
        for i, a, b in zip(where[starts], starts, np.r_[starts[1:], len(where)]):  # one small product per leaf
            s2[i] = c[a:b].T @ c[a:b]
    m = s1 / np.maximum(cnt, 1.0)[:, None]
    cov = (s2 - cnt[:, None, None] * m[:, :, None] * m[:, None, :]) / np.maximum(cnt - 1.0, 1.0)[:, None, None]
    cov[cnt < 2] = 0.0
    lo, hi = means.copy(), means.copy()
    if len(x):
        lo[where[starts]] = np.minimum(lo[where[starts]], np.minimum.reduceat(x, starts, axis=0))
        hi[where[starts]] = np.maximum(hi[where[starts]], np.maximum.reduceat(x, starts, axis=0))
    return cov, lo, hi


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False).astype(float)


def mean(family: str, eta: np.ndarray) -> np.ndarray:
    if family == "binomial":
        t = np.exp(-np.abs(eta))
        return np.where(eta >= 0, 1.0 / (1.0 + t), t / (1.0 + t))
    return np.exp(eta) if family == "poisson" else eta


def _a2(family: str, eta: np.ndarray) -> np.ndarray:
    """A''(eta), the information weight of a point (scale 1)."""
    mu = mean(family, eta)
    return {"binomial": mu * (1.0 - mu), "poisson": mu}.get(family, np.ones_like(eta))


@dataclass
class Pairs:
    """The points (``variables`` + weight, ordered by cluster), each point's cluster, and per cluster
    the design Jacobian at its mean (n x p x q), its covariance (n x q x q) and box (n x q each)."""

    table: pa.Table
    cluster: np.ndarray
    jac: np.ndarray
    cov: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def pairs(clusters: pa.Table, variables: list[str], quant: list[str], cov: np.ndarray, lo: np.ndarray,
          hi: np.ndarray, weight: str, budget: int, family: str, theta0: np.ndarray,
          design_rows: Callable[[pa.Table], np.ndarray]) -> Pairs:
    """Two points per cluster, xbar +- Cov_c^(1/2) z along the greedy information direction z (module
    notes), for at most ``budget`` clusters (the rest, and clusters of one row or no spread, keep
    their mean point), clipped to the box ``lo``..``hi``. ``cov``, ``lo``, ``hi``: per cluster
    (:func:`leaf_stats`); ``design_rows(points)``: their design matrix, in order."""
    w = _col(clusters, f"{_P}w")
    n, q = len(w), len(quant)
    means = np.column_stack([_col(clusters, v) for v in quant])
    lam, V = np.linalg.eigh((cov + cov.transpose(0, 2, 1)) / 2)
    lam = np.clip(lam, 0.0, None)
    R = (V * np.sqrt(lam)[:, None, :]) @ V.transpose(0, 2, 1)  # Cov_c^(1/2)
    # design rows at the mean points and at q forward-difference copies of them
    sd = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None))
    h = np.maximum(sd, 1e-6 * (1.0 + np.abs(means)))
    base = clusters.select(list(variables)).take(pa.array(np.tile(np.arange(n), q + 1)))
    Z = np.tile(means, (q + 1, 1))
    for j in range(q):
        Z[(j + 1) * n:(j + 2) * n, j] += h[:, j]
    for j, v in enumerate(quant):
        base = base.set_column(base.schema.get_field_index(v), v, pa.array(Z[:, j]))
    X = design_rows(base).reshape(q + 1, n, -1)
    J = ((X[1:] - X[0]) / h.T[:, :, None]).transpose(1, 2, 0)  # n x p x q
    JR = J @ R
    a = w * _a2(family, X[0] @ theta0)
    info = (X[0] * a[:, None]).T @ X[0]
    top = lam.max(axis=1)
    split = (w >= 2.0) & (top > 1e-24 * (1.0 + np.abs(means).max(axis=1, initial=0.0)) ** 2)
    order = [i for i in np.lexsort((np.arange(n), -(w * top))) if split[i]][:budget]
    split[:] = False
    split[order] = True
    z = np.zeros((n, q))
    step = max(1, -(-len(order) // BATCHES))
    for k in range(0, len(order), step):
        sel = np.array(order[k:k + step])
        K = JR[sel].transpose(0, 2, 1) @ np.linalg.pinv(info) @ JR[sel]
        z[sel] = np.linalg.eigh((K + K.transpose(0, 2, 1)) / 2)[1][:, :, -1]
        d = np.einsum("npq,nq->np", JR[sel], z[sel])
        info = info + (d * a[sel, None]).T @ d
    off = np.einsum("nij,nj->ni", R, z)
    # point 2i (+offset, or the mean point) and 2i + 1 (-offset) of cluster i
    idx = np.repeat(np.arange(n), np.where(split, 2, 1))
    sign = np.where(np.r_[True, idx[1:] != idx[:-1]], 1.0, -1.0) * split[idx]
    out = clusters.select(list(variables)).take(pa.array(idx))
    for j, v in enumerate(quant):
        x = np.clip(means[idx, j] + sign * off[idx, j], lo[idx, j], hi[idx, j])
        out = out.set_column(out.schema.get_field_index(v), v, pa.array(x))
    out = out.append_column(weight, pa.array(np.where(split[idx], w[idx] / 2, w[idx])))
    return Pairs(out, idx, J, cov, lo, hi)


@dataclass
class Moves:
    """What the calibration may also move: the points' quantitative variables ``x`` (n x q), within
    ``lo``..``hi``, at the cost w dx' C^-1 dx (C: n x q x q, the cluster's covariance), with the design
    Jacobian ``jac`` (n x p x q) and ``rows(x)`` the design matrix at new positions."""

    x: np.ndarray
    jac: np.ndarray
    cov: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    rows: Callable[[np.ndarray], np.ndarray]


def calibrate(X: np.ndarray, y: np.ndarray, w: np.ndarray, cell: np.ndarray, family: str, theta: np.ndarray,
              moves: Moves | None = None, steps: int = 12) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """Weights w + d (and, with ``moves``, positions x + dx) with the smallest sum d^2 / w (+ w dx'C^-1 dx)
    such that every cell keeps its total weight and the weighted score at ``theta`` is zero; each
    weight stays >= FLOOR x its value (>= 1 if it was), each position in its box.

    With h_k = (y_k - mu_k) x_k the score is sum (w + d)_k h_k. A linearised step is
    d_k = w_k (h_k - hbar_cell)'lambda (hbar the cell's weighted mean of h: that keeps the cell
    totals) and dx_k = C_k H_k'lambda (H_k = dh_k/dx), lambda from one p x p system; weights that
    would fall below their floor are fixed there and the rest re-solved (their cells' other points
    make up the difference). Weights alone are one exact step; with positions (the score is not
    linear in them) Gauss-Newton steps, positions clipped to their boxes, until the score is ~0.
    Returns the weights, the positions (None without ``moves``), the largest |d| / w and the score
    left relative to the starting one (the inputs come back unchanged if a cell cannot keep its total)."""
    _, cid = np.unique(cell, return_inverse=True)
    nc = int(cid.max()) + 1 if len(cid) else 0
    lo = np.where(w >= 1.0, np.maximum(FLOOR * w, 1.0), FLOOR * w)
    wt = w.copy()
    x = None if moves is None else moves.x.copy()
    start = None
    for _ in range(1 if moves is None else steps):
        eta = X @ theta
        r = y - mean(family, eta)
        h = X * r[:, None]
        score = h.T @ wt
        start = np.linalg.norm(score) if start is None else start
        if np.linalg.norm(score) <= 1e-10 * max(start, 1e-300):
            break
        extra = 0.0
        if moves is not None:  # dh/dx = r J - A'' x (J'theta)'
            H = r[:, None, None] * moves.jac - (_a2(family, eta)[:, None] * X)[:, :, None] * \
                np.einsum("npq,p->nq", moves.jac, theta)[:, None, :]
            HC = H @ moves.cov
            extra = np.tensordot(HC * wt[:, None, None], H, axes=([0, 2], [0, 2]))
        free = wt > lo
        d = np.zeros(len(w))
        for _ in range(50):  # active set: weights that hit their floor are fixed there
            D = np.where(free, wt, 0.0)
            Wc = np.bincount(cid, D, nc)
            Fc = np.bincount(cid, np.where(free, 0.0, d), nc)  # fixed changes each cell must make up for
            hbar = np.stack([np.bincount(cid, D * h[:, j], nc) for j in range(h.shape[1])], axis=1)
            hbar /= np.where(Wc > 0, Wc, 1.0)[:, None]
            ht = h - hbar[cid]
            rhs = -score + Fc @ hbar - h[~free].T @ d[~free]
            lam = np.linalg.lstsq((ht * D[:, None]).T @ ht + extra, rhs, rcond=None)[0]
            d = np.where(free, D * (ht @ lam) - D * (Fc / np.where(Wc > 0, Wc, 1.0))[cid], d)
            low = free & (wt + d < lo)
            if not low.any():
                break
            d[low] = lo[low] - wt[low]
            free &= ~low
        if np.any(np.abs(np.bincount(cid, d, nc)) > 1e-9 * np.bincount(cid, w, nc)):
            return w.copy(), None if moves is None else moves.x.copy(), 0.0, 1.0
        wt = wt + d
        if moves is not None:
            x = np.clip(x + np.einsum("npq,p->nq", HC, lam), moves.lo, moves.hi)
            X = moves.rows(x)
    h = X * (y - mean(family, X @ theta))[:, None]
    left = float(np.linalg.norm(h.T @ wt) / max(start, 1e-300))
    return wt, x, float(np.max(np.abs(wt - w) / w, initial=0.0)), left
