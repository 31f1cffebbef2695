"""Likelihood profiles as SQL: each row's log-likelihood at the design points, their principal
directions, and the coordinates the tree splits on (exact, or from the second-order expansion)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model.families import loglik_sql, mean_sql
from ..sql.build import linear_predictor
from ..sql.names import PREFIX as _P
from ..sql.quote import comma, ident, literal
from .cells import Model
from .spec import TAYLOR_TOL, WHITEN


def rows_sql(m: Model, theta0: np.ndarray, chol: np.ndarray, from_sql: str, carry: tuple[str, ...] = ()) -> str:
    """Add eta_0 = x'theta_0 and the whitened design z = L'x to rows that have the model's variables
    (bare names), ``__dq_y`` and ``__dq_cell``; ``carry`` lists further columns to keep."""
    xs = [f"({e})" for e in m.design.exprs]
    p = len(xs)
    e0 = linear_predictor(theta0, m.design.exprs)
    zs = []
    for j in range(p):
        t = [f"{literal(float(chol[i, j]))} * {xs[i]}" for i in range(p) if chol[i, j] != 0]
        zs.append(f"({' + '.join(t) if t else '0.0'}) AS {_P}z{j}")
    keep = [ident(v) for v in m.design.variables] + [f"{_P}cell", f"{_P}y"] + list(carry)
    return f"SELECT {comma(keep)}, ({e0}) AS {_P}e0, {comma(zs)} FROM ({from_sql})"


def profile_sql(family: str, U: np.ndarray, rows_sql: str) -> str:
    """Add ``__dq_l{k}``: the row's log-likelihood at theta_0 + L u_k for each design point u_k
    (``loglik_sql``); the linear predictors are computed once in an inner SELECT."""
    etas = []
    for k, u in enumerate(U):
        terms = [f"{_P}e0"] + [f"{literal(float(c))} * {_P}z{j}" for j, c in enumerate(u) if c != 0]
        etas.append(f"({' + '.join(terms)}) AS {_P}h{k}")
    ls = [f"{loglik_sql(family, f'{_P}y', f'{_P}h{k}')} AS {_P}l{k}" for k in range(len(U))]
    return f"SELECT *, {comma(ls)} FROM (SELECT *, {comma(etas)} FROM ({rows_sql}))"


@dataclass(frozen=True)
class Basis:
    """Profile coordinates c = (P @ B - mu) / sd, ``B`` (K x d) the leading principal directions of
    the sample's profiles; ``spread`` is each coordinate's within-cell sd."""

    B: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    spread: np.ndarray


def basis(profiles: np.ndarray, cells: np.ndarray, p: int, centre_rows: bool = False) -> Basis:
    """Leading principal directions of the within-cell centred profiles (d <= p + 1), and their scaling.

    With design points a few standard errors apart and large N, the raw profile distance is all
    level (the row's log-likelihood at theta_0, i.e. its eta_0): clustering on it alone gives
    slabs along eta_0, which keep the score at theta_0 but leave the other directions of x nearly
    unresolved, so the squashed information matrix is ill-conditioned. Whitening every direction
    (unit variance) loses the eta_0 resolution instead (Jensen bias of one mean point per cluster).
    The compromise: direction r is divided by sd_r ** WHITEN * sd_0 ** (1 - WHITEN), sd_r its
    spread *within cells* (the tree only ever splits within a cell). Geometric mean of the MSE
    over 12 paper-structure data sets of 40k rows at M = 200, LDS / ILDS(3): WHITEN = 0.3:
    7,400 / 1.7; 0.5: 80 / 1.8; 0.7: 21 / 0.84; 0.85: 13 / 2.7; 1: 22 / 5.3 (one mean point per
    cluster, no calibration). With two points per cluster and the calibration (points.py) the
    coefficient error no longer depends on it (36 runs, gm 0.0017 at 0.7 and 1), but 1 resolves
    the cells more evenly: a sub-model fitted on the table gm MSE 20 against 30 at 0.7, the
    second-order model 7.9e4 against 2.6e5, so WHITEN = 1 since 2026-12. Scaling by the total
    spread instead (before 2026-11-24; 49 / 4.3 at 0.5) shrank the directions whose spread is
    mostly between cells, such as eta_0 itself when the slopes are small: on 1M rows with y
    independent of 9 normal x the clusters then had 0.2% of the information along theta_0's
    direction and the squashed fit missed by ~300 SE (now ~1 SE).

    The directions are eigenvectors of the K x K Gram matrix (0.03 s against 0.7 s for the SVD of
    200k x 53 profiles), each with a fixed sign. Taking them separately in the even and odd parts
    of profile space (mirror-symmetric and antisymmetric) was tried: it drops the small level
    component of the score directions and one-pass LDS got 3x worse (geometric mean MSE 145 vs 49
    over 12 data sets of 40k rows, M = 200)."""
    if centre_rows:  # drop each row's mean level: terms constant in theta (lgamma(y+1), y^2) go
        profiles = profiles - profiles.mean(axis=1, keepdims=True)
    centred = profiles.copy()
    for c in np.unique(cells):
        sel = cells == c
        centred[sel] -= centred[sel].mean(axis=0)
    w, v = np.linalg.eigh(centred.T @ centred)
    w, v = w[::-1], v[:, ::-1]
    keep = max(1, int(min(p + 1, np.sum(w > 1e-14 * max(w[0], 1e-300)))))
    B = v[:, :keep]
    B = B * np.where(B[np.abs(B).argmax(axis=0), np.arange(keep)] < 0, -1.0, 1.0)  # a fixed sign per direction
    if centre_rows:  # (P - rowmean P) B = P (B - column means of B): the SQL stays one linear map
        B = B - B.mean(axis=0, keepdims=True)
    mu = (profiles @ B).mean(axis=0)
    within = (centred @ B).std(axis=0)  # the tree splits within cells: scale by the spread it sees
    within[within <= 0] = 1.0
    sd = within ** WHITEN * within[0] ** (1 - WHITEN)
    return Basis(B, mu, sd, within / sd)


def list_sql(v) -> str:
    return "[" + ", ".join(literal(float(a)) for a in v) + "]"


def second_order_plan(exact: np.ndarray, lean: np.ndarray, full: np.ndarray, spread: np.ndarray
                       ) -> tuple[np.ndarray, float] | None:
    """Which coordinates need their quadratic term, and the largest error relative to the spread,
    judged on the sample's rows: exact coordinates, second-order ones without quadratic terms
    (``lean``) and with them where ``lean`` misses (``full``); None when some coordinate misses by
    more than TAYLOR_TOL even with them (then the profiles are computed exactly)."""
    err = lambda c: np.abs(c - exact).max(axis=0, initial=0.0) / spread  # noqa: E731
    e_lean, e_full = err(lean), err(full)
    quad = e_lean > TAYLOR_TOL
    worst = np.where(quad, e_full, e_lean)
    return (quad, float(worst.max(initial=0.0))) if np.all(worst <= TAYLOR_TOL) else None


def coords_sql(m: Model, family: str, theta0: np.ndarray, offsets: np.ndarray, basis: Basis, from_sql: str,
                carry: list[str], quad: np.ndarray | None = None) -> str:
    """Add the profile coordinates ``__dq_c{r}`` = ((P B)_r - mu_r) / sd_r without spelling out P, and
    the row's response residual at theta_0, ``__dq_r`` = y - A'(eta_0) (its score at theta_0 is r x).

    Every family's row log-likelihood is l(eta) = y eta - A(eta) - c(y) (binomial: A = softplus,
    c = 0; poisson: A = exp, c = lgamma(y + 1); gaussian: A = eta^2 / 2, c = (y^2 + log 2 pi) / 2),
    and design point k has eta_k = eta_0 + g_k with g_k = x'offset_k.

    Exact (default): the projection on B_r is (y x)'(T' B_r) - A(T x)' B_r - c(y) sum(B_r), with T
    the K x p design points; only the K values A(eta_k) are per-row non-linear work. eta_0 and the
    g_k are list dot products, one per mirrored pair of design points, A is one ``list_transform``
    and each coordinate one dot product of [y x, A(eta)].

    Second order (``quad`` given: a flag per coordinate): expand A around eta_0; coordinate r is
    s_r (y eta_0 - A(eta_0) - c(y)) + (y - A'(eta_0)) a_r'x - A''(eta_0) / 2 x'Q_r x, with
    s_r = sum_k B_kr, a_r = sum_k B_kr offset_k and Q_r = sum_k B_kr offset_k offset_k' (the
    quadratic term only where ``quad`` says): one softplus per row instead of K, and p-long dot
    products instead of K-long ones. Mirrored design points cancel the even powers of g in an odd
    direction and the odd ones in an even direction, so the error is O(g^3) and O(g^4) there;
    exact for gaussian (A is quadratic)."""
    xs = [f"({e})" for e in m.design.exprs]
    keep = [ident(v) for v in m.design.variables] + [f"{_P}cell"] + list(carry)
    B, mu, sd = basis.B, basis.mu, basis.sd
    cy = {"binomial": None, "poisson": f"lgamma({_P}y + 1.0)",
          "gaussian": f"0.5 * ({_P}y * {_P}y + {math.log(2 * math.pi)!r})"}[family]
    inner = (f"SELECT {comma(keep)}, CAST({_P}y AS DOUBLE) AS {_P}y, [{comma(xs)}] AS {_P}x "
             f"FROM ({from_sql})")
    if quad is not None:
        return second_order_sql(family, theta0, offsets, basis, quad, inner, keep, cy)
    A = {"binomial": "greatest(v, 0.0) + ln(1.0 + exp(-abs(v)))", "poisson": "exp(v)",
         "gaussian": "0.5 * v * v"}[family]
    thetas = theta0 + offsets
    # eta_k as eta_0 (centre), eta_0 + g_j or eta_0 - g_j (a mirrored pair), or its own dot product
    gs: list[str] = []
    etas: list[str] = []
    seen: dict[int, int] = {}
    for k, o in enumerate(offsets):
        if not np.any(o):
            etas.append(f"{_P}e0")
            continue
        mirror = next((j for j in seen if np.array_equal(offsets[j], -o)), None)
        if mirror is not None:
            etas.append(f"{_P}e0 - {_P}g{seen[mirror]}")
            continue
        seen[k] = len(gs)
        gs.append(f"list_dot_product({_P}x, {list_sql(o)}) AS {_P}g{len(gs)}")
        etas.append(f"{_P}e0 + {_P}g{seen[k]}")
    cexpr = []
    for r in range(B.shape[1]):
        w = np.concatenate([thetas.T @ B[:, r], -B[:, r]]) / sd[r]
        e = f"list_dot_product({_P}pw, {list_sql(w)})"
        if cy is not None:
            e += f" - {literal(float(B[:, r].sum() / sd[r]))} * {_P}cy"
        cexpr.append(f"({e} - {literal(float(mu[r] / sd[r]))}) AS {_P}c{r}")
    lin = (f"SELECT {comma(keep)}, {_P}y, {_P}x, list_dot_product({_P}x, {list_sql(theta0)}) AS {_P}e0"
           + "".join(f", {g}" for g in gs) + f" FROM ({inner})")
    yx = f"[{comma(f'{_P}y * {x}' for x in xs)}]"
    prof = (f"SELECT {comma(keep)}, list_concat({yx}, list_transform([{comma(etas)}], lambda v: {A})) AS {_P}pw, "
            f"{_P}y - {mean_sql(family, f'{_P}e0')} AS {_P}r" + (f", {cy} AS {_P}cy" if cy else "") + f" FROM ({lin})")
    return f"SELECT {comma(keep)}, {comma(cexpr)}, {_P}r FROM ({prof})"


def second_order_sql(family: str, theta0: np.ndarray, offsets: np.ndarray, basis: Basis, quad: np.ndarray,
                      inner: str, keep: list[str], cy: str | None) -> str:
    """The coordinates from the second-order expansion (see :func:`coords_sql`); binomial and gaussian."""
    e0 = f"{_P}e0"
    eta0 = f"SELECT *, list_dot_product({_P}x, {list_sql(theta0)}) AS {e0} FROM ({inner})"
    if family == "binomial":  # A = softplus, A' = sigmoid, A'' = A'(1 - A'), all from t = exp(-|eta_0|)
        t = f"{_P}t"
        derivs = (f"greatest({e0}, 0.0) + ln(1.0 + {t}) AS {_P}a0, "
                  f"CASE WHEN {e0} >= 0 THEN 1.0 / (1.0 + {t}) ELSE {t} / (1.0 + {t}) END AS {_P}a1")
        a2 = f"{_P}a1 * (1.0 - {_P}a1)"
        pre = f"SELECT *, exp(-abs({e0})) AS {t} FROM ({eta0})"
    else:  # gaussian: A = eta^2 / 2, A' = eta, A'' = 1 (the expansion is exact)
        derivs = f"0.5 * {e0} * {e0} AS {_P}a0, {e0} AS {_P}a1"
        a2 = "1.0"
        pre = eta0
    level = f"{_P}y * {e0} - {_P}a0" + (f" - {cy}" if cy else "")
    dots: list[str] = []  # x'v for the linear forms and the eigenvectors of the quadratic ones

    def dot(v: np.ndarray) -> str:
        dots.append(f"list_dot_product({_P}x, {list_sql(v)}) AS {_P}d{len(dots)}")
        return f"{_P}d{len(dots) - 1}"

    cexpr = []
    for r in range(basis.B.shape[1]):
        b = basis.B[:, r] / basis.sd[r]
        terms = []
        s_r = float(b.sum())
        if abs(s_r) > 1e-12 * np.abs(b).sum():
            terms.append(f"{literal(s_r)} * ({level})")
        a_r = offsets.T @ b
        if np.any(np.abs(a_r) > 1e-15 * np.abs(offsets.T) @ np.abs(b)):
            terms.append(f"({_P}y - {_P}a1) * {dot(a_r)}")
        if quad[r]:
            Q = (offsets.T * b) @ offsets
            lam, V = np.linalg.eigh((Q + Q.T) / 2)
            big = np.flatnonzero(np.abs(lam) > 1e-12 * max(np.abs(lam).max(initial=0.0), 1e-300))
            if big.size:
                form = " + ".join(f"{literal(float(lam[j]))} * {d} * {d}" for j, d in ((j, dot(V[:, j])) for j in big))
                terms.append(f"-0.5 * {a2} * ({form})")
        terms.append(literal(-float(basis.mu[r] / basis.sd[r])))
        cexpr.append(f"({' + '.join(terms)}) AS {_P}c{r}")
    body = f"SELECT *, {derivs}" + "".join(f", {d}" for d in dots) + f" FROM ({pre})"
    return f"SELECT {comma(keep)}, {comma(cexpr)}, {_P}y - {_P}a1 AS {_P}r FROM ({body})"
