"""Likelihood-based data squashing (LDS, Madigan et al.) and its iterated form (ILDS), in DuckDB.

For a stated GLM (formula + family) every row gets a *likelihood profile*: its log-likelihood at
the K points of a central composite design around an initial estimate theta_0 (centre, 2p star
points at +-ds, factorial corners at distance df, in whitened standard-error units: theta = theta_0 + L u
with L L' the estimated covariance of theta_0, so one unit is one standard error along each
principal direction). Rows with similar profiles are interchangeable for likelihood-based
inference near theta_0, so they are clustered; each cluster becomes two pseudo-points (``points=2``,
the default: the cluster mean +- its within-cluster spread along the direction that adds the most
information, half its rows each) or one at the cluster mean (``points=1``), and the points are
calibrated so that the squashed table's MLE is a Newton step made with the full data's score
(``calibrate=True``; see :mod:`duckquash.lds.points`).

Everything that touches the rows is generated SQL:

1. *cells* pass: count rows per model cell (categorical variables, and the 0/1 response for
   binomial, so clusters never mix levels and y stays pure); checks the response.
2. *sample* pass: a hash-seeded Bernoulli sample of max(20k, 20 M, N/10) rows (deterministic,
   independent of row order). theta_0 is its MLE with weights N/n (``init="sample"``), optionally
   followed by one IRLS step over the full data (``init="step"``), or the full MLE (``init="mle"``);
   its covariance gives the whitening L. The tree below is fitted to a sub-sample of
   max(20k, 20 M) of these rows.
3. *squash* pass: profile of every row (``loglik_sql`` at each design point, computed in the query),
   projected on the leading principal directions of the sample's profiles (d <= p + 1 coordinates,
   Euclidean distance between profiles is kept); each row descends a k-d tree fitted to the
   sample's profile coordinates within its cell (balanced b-ary splits along the widest coordinate,
   one leaf per wanted cluster); then one GROUP BY leaf gives cluster sizes, variable means, the
   cluster's summed profile and its rows' score at theta_0 (p sums of (y - A'(eta_0)) x, whose
   total is the full data's score). Cost: the coordinates are computed from the K non-linear terms A(eta_k)
   with list dot products (``_coords_sql``: one per mirrored pair of design points, one per
   coordinate), or, where that is within 1% of every coordinate's spread on the sample (large N:
   the design points are close), from the profile's second-order expansion around eta_0, with one
   softplus per row instead of K; the descent is one ``list_extract`` projection per tree level
   against a one-row table of node lists (no join per level).

The paper's optional refinement (``refine=True``) moves each cluster's pseudo-points (their
quantitative variables, within the cluster's range) so that their weighted profiles sum to the
cluster's summed profile in the d coordinates (damped Gauss-Newton with step halving, all clusters
at once), before the calibration. With one mean point per cluster, on 6 paper-structure data sets
of 40k rows at M = 200, it lowered the match residual by ~35% (there are more coordinates than
movable variables) but not the coefficient error (geometric-mean MSE 29 against 21 without), so
it is off by default. Not done: a Lloyd-style re-assignment pass after the tree (the leaves are
the clusters; the calibration needs no second pass either).

ILDS (``iterations=k``) re-centres the design and reruns the squash pass, shrinking ds and df by
``cooling`` each time. The paper re-centres on the squashed table's MLE; here that diverged
(relative error 4 SE -> 13 SE -> separation): one pseudo-point per cluster keeps the score at
theta_0 but not the within-cluster information, so the squashed MLE is theta_0 - I_sq^-1 S(theta_0)
with I_sq < I_full, and the error map I - I_sq^-1 I_full has eigenvalues below -1 in the
directions the clusters resolve least. The new centre is instead the Newton step
theta_1 = theta_0 + Sigma_0 S(theta_0) with the first estimate's covariance Sigma_0. Until
2026-12 S was the squashed table's score (on 100k paper-structure rows at M = N/200: LDS MSE 7.3,
3 ILDS iterations 0.24; refit-on-squashed-MLE ILDS: 134 and worse); one mean point per cluster
biases it (Jensen), which held ILDS(3) at MSE ~0.85 on 40k rows. S is now the full data's score,
summed in the squash pass at no extra cost, and the calibration makes theta_1 the squashed MLE
of every pass, so one-pass LDS already has the first Newton step and ILDS(k) has k of them.
"""
from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..io.progress import progress as progress_bar
from ..io.source import resolve
from ..model.irls import fit_design
from ..sql.names import PREFIX as _P
from ..sql.quote import comma, ident, literal
from .cells import Model, build_model, cells_pass, keyed_sql, with_cell_sql
from .design import ccd
from . import points, profiles
from .spec import CENTRE_ROWS, TAYLOR_TOL, LdsSpec
from .tree import allocate, descend_sql, fit_tree, nodes_table


@dataclass(frozen=True)
class LdsIteration:
    """One squash pass: the design centre and spread, the points made, and how well they match."""

    theta0: np.ndarray
    ds: float
    df: float
    n_points: int
    profile_resid: float   # ||summed - weight x pseudo-point profile|| / spread of summed profiles over clusters
    level_resid: float     # the same along the leading principal direction (mostly the level)
    seconds: float
    profiles: str = "exact"         # how the pass computed the rows' profiles: "exact" or "second-order"
    profile_error: float | None = None  # second order: max error / spread on the sample's rows
    refined_resid: float | None = None  # profile-match residual after the refinement (refine=True)
    change_se: float | None = None  # max |theta_1 - theta_0| / SE: the Newton step to ILDS's next centre
    n_clusters: int | None = None   # clusters (regions); points: two per cluster with points=2
    weight_change: float | None = None  # calibrate=True: largest |change| / weight
    score_left: float | None = None     # calibrate=True: score at theta_1 left, relative (0 unless floors bind)
    theta1: np.ndarray | None = None    # theta_0 + Sigma_0 S(theta_0), S the full data's score: the next centre


def _design_from_fit(res) -> tuple[np.ndarray, np.ndarray]:
    cov = np.asarray(res.cov_params(), dtype=float)
    cov = (cov + cov.T) / 2
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov)
        chol = v * np.sqrt(np.clip(w, 0, None))
    return np.asarray(res.params, dtype=float), chol


def _refine(pts: pa.Table, cl: np.ndarray, movable: list[str], lo: np.ndarray, hi: np.ndarray, w: np.ndarray,
            S: np.ndarray, coords_of, steps: int = 4) -> tuple[pa.Table, np.ndarray]:
    """The paper's optional refinement: move each cluster's pseudo-points (their quantitative variables,
    each point within the cluster's range ``lo``..``hi``, per cluster) so that their weighted profiles
    sum to the cluster's summed profile ``S``, in the d profile coordinates; damped Gauss-Newton with
    forward-difference Jacobians, all clusters at once (one small SQL query per step). A cluster
    keeps its last move that lowered its residual. ``cl``: each point's cluster (ordered)."""
    X = np.column_stack([pts.column(v).to_numpy() for v in movable])
    lo, hi = lo[cl], hi[cl]
    h = 1e-6 * np.maximum(np.abs(X), (hi - lo).max(axis=0, initial=0.0) + 1e-300)
    n, q = X.shape
    nc = S.shape[0]
    slot = np.r_[0, (cl[1:] == cl[:-1]).astype(int)]  # first or second point of its cluster
    k = int(slot.max(initial=0)) + 1

    def summed(C: np.ndarray) -> np.ndarray:  # per point -> weighted sum per cluster
        out = np.zeros((nc, C.shape[1]))
        np.add.at(out, cl, C * w[:, None])
        return out

    def with_x(Z: np.ndarray, rows: np.ndarray) -> pa.Table:
        t = pts.take(pa.array(rows))
        for j, v in enumerate(movable):
            t = t.set_column(t.schema.get_field_index(v), v, pa.array(Z[:, j]))
        return t

    R = S - summed(coords_of(pts))
    best = np.einsum("ij,ij->i", R, R)
    for _ in range(steps):
        # the points and q perturbed copies of every point, evaluated in one query
        rows = np.tile(np.arange(n), q + 1)
        Z = np.tile(X, (q + 1, 1))
        for j in range(q):
            Z[(j + 1) * n:(j + 2) * n, j] += h[:, j]
        c = coords_of(with_x(Z, rows)).reshape(q + 1, n, -1)
        D = (c[1:] - c[0]).transpose(1, 2, 0) / h[:, None, :] * w[:, None, None]  # n x d x q
        J = np.zeros((nc, D.shape[1], k * q))  # cluster residual vs the moves of its points
        for s_ in range(k):
            sel = slot == s_
            J[cl[sel], :, s_ * q:(s_ + 1) * q] = D[sel]
        r = S - summed(c[0])
        A = np.einsum("ndi,ndj->nij", J, J)
        g = np.einsum("ndi,nd->ni", J, r)
        A += 1e-6 * np.einsum("nii->n", A)[:, None, None] * np.eye(k * q) + 1e-300 * np.eye(k * q)
        step = np.linalg.solve(A, g[..., None])[..., 0]
        step = step.reshape(nc, k, q)[cl, slot]  # per point
        moved = np.zeros(nc, bool)
        for frac in (1.0, 0.5, 0.25):  # step halving for the clusters the full step did not help
            X_new = np.clip(X + frac * step, lo, hi)
            R_new = S - summed(coords_of(with_x(X_new, np.arange(n))))
            new = np.einsum("ij,ij->i", R_new, R_new)
            better = (new < best) & ~moved
            X[better[cl]], R[better], best[better] = X_new[better[cl]], R_new[better], new[better]
            moved |= better
        if not moved.any():
            break
    return with_x(X, np.arange(n)), R


def _design_rows(con, pts: pa.Table, m: Model, view: str) -> tuple[np.ndarray, np.ndarray]:
    """The design matrix and the response of the points (in order)."""
    con.register(view, pts.append_column(f"{_P}i", pa.array(np.arange(pts.num_rows))))
    try:
        got = con.execute(f"SELECT {comma(f'CAST(({e}) AS DOUBLE)' for e in m.design.exprs)}, "
                          f"CAST({m.y} AS DOUBLE) FROM {ident(view)} ORDER BY {_P}i").fetchnumpy()
    finally:
        con.unregister(view)
    cols = [np.asarray(v, dtype=float) for v in got.values()]
    return np.column_stack(cols[:-1]), cols[-1]


def _squash_once(con, m: Model, spec: LdsSpec, theta0, chol, scale: float, ds, df, sample_table: str,
                 cuts: tuple[int, int], cells_table: str, names: dict) -> tuple[pa.Table, LdsIteration, int, np.ndarray]:
    """One squash pass: the points, the iteration's report, the design size and the next centre.
    ``cuts``: hash cuts of the sample's rows for the principal directions (and the second-order
    check) and for the tree (the first is a subset of the second)."""
    t0 = time.perf_counter()
    p = len(m.design.exprs)
    U = ccd(p, ds, df)
    K = len(U)
    lnames = [f"{_P}l{k}" for k in range(K)]
    rows_below = lambda cut: (f"SELECT *, rowid AS {_P}rid FROM {ident(sample_table)} "  # noqa: E731
                              f"WHERE {_P}h < {cut}::UBIGINT")
    pca_rows, tree_rows = rows_below(cuts[0]), rows_below(cuts[1])
    # exact profiles of a sample's rows (in rowid order): principal directions, the second-order check
    srows = profiles.rows_sql(m, theta0, chol, pca_rows, (f"{_P}rid",))
    sp = con.execute(f"SELECT {_P}cell, {comma(lnames)} FROM ({profiles.profile_sql(spec.family, U, srows)}) "
                     f"ORDER BY {_P}rid").fetchnumpy()
    P = np.column_stack([np.asarray(sp[k], dtype=float) for k in lnames])
    pcells = np.asarray(sp[f"{_P}cell"], dtype=np.int64)
    basis = profiles.basis(P, pcells, p, CENTRE_ROWS and spec.family != "binomial")
    d = basis.B.shape[1]
    exact = (P @ basis.B - basis.mu) / basis.sd  # those rows' coordinates
    offsets = U @ chol.T

    def sample_coords(rows: str, flags: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        q = profiles.coords_sql(m, spec.family, theta0, offsets, basis, rows, [f"{_P}rid"], flags)
        got = con.execute(f"SELECT {_P}cell, {comma(f'{_P}c{r}' for r in range(d))} FROM ({q}) "
                          f"ORDER BY {_P}rid").fetchnumpy()
        return (np.column_stack([np.asarray(got[f"{_P}c{r}"], dtype=float) for r in range(d)]),
                np.asarray(got[f"{_P}cell"], dtype=np.int64))

    # second-order profiles where, on the sample's rows, they are within 1% of every coordinate's spread
    quad, rel = None, None
    if spec.profiles == "auto" and spec.family in ("binomial", "gaussian"):  # poisson: exp is cheap anyway
        lean = sample_coords(pca_rows, np.zeros(d, bool))[0]
        need = np.abs(lean - exact).max(axis=0, initial=0.0) > TAYLOR_TOL * basis.spread
        full = sample_coords(pca_rows, need)[0] if need.any() else lean
        plan = profiles.second_order_plan(exact, lean, full, basis.spread)
        if plan is not None:
            quad, rel = plan
    # the tree, on the coordinates the rows will have in the squash pass (the exact ones of the rows
    # profiled above are already known when those are all the tree's rows)
    if quad is None and cuts[0] == cuts[1]:
        C, scells = exact, pcells
    else:
        C, scells = sample_coords(tree_rows, quad)
    counts = {int(c): int(n) for c, n in zip(*np.unique(scells, return_counts=True))}
    pair = spec.points == 2 and bool(m.quantitative)
    # two points per cluster: half as many leaves (but one per cell at least)
    leaves = allocate(m.cells, max(spec.size // 2, len(m.cells)) if pair else spec.size, counts)
    tree = fit_tree(C, scells, leaves, len(m.cells), spec.branching)
    nodes_table(con, tree, names["nodes"], spec.branching)

    def coords_sql(from_sql: str, carry: list[str]) -> str:
        return profiles.coords_sql(m, spec.family, theta0, offsets, basis, from_sql, carry, quad)

    # the squash pass over all rows: profile -> coordinates -> tree descent -> one GROUP BY
    rows = coords_sql(with_cell_sql(m, keyed_sql(m), cells_table), [])
    walked = descend_sql(rows, tree, names["nodes"], spec.branching, d)
    outs = [f"any_value({ident(v)}) AS {ident(v)}" for v in m.categorical]
    outs += [f"avg(CAST({ident(v)} AS DOUBLE)) AS {ident(v)}" for v in m.quantitative]
    outs.append(f"any_value({_P}cell) AS {_P}cellid")
    quant = list(m.quantitative)
    movable = [v for v in quant if ident(v) not in m.y] if spec.refine else []
    if movable:  # each cluster's box: refined points stay in it
        outs += [f"{fn}(CAST({ident(v)} AS DOUBLE)) AS {_P}{b}{j}" for j, v in enumerate(quant)
                 for fn, b in (("min", "lo"), ("max", "hi"))]
    sums = [f"sum({_P}c{r}) AS {_P}s{r}" for r in range(d)]
    # the full data's score at theta_0, a by-product of the pass: ILDS's next centre (below)
    sums += [f"sum({_P}r * ({e})) AS {_P}u{j}" for j, e in enumerate(m.design.exprs)]
    agg = (f"SELECT {_P}node, count(*)::DOUBLE AS {_P}w, {comma(outs)}, {comma(sums)} "
           f"FROM ({walked}) GROUP BY {_P}node ORDER BY {_P}node")
    clusters = con.sql(agg).to_arrow_table()
    w = clusters.column(f"{_P}w").to_numpy()
    S = np.column_stack([clusters.column(f"{_P}s{r}").to_numpy() for r in range(d)])  # sum of (P B - mu) / sd
    n_clusters = clusters.num_rows
    pr = None
    if pair:  # each cluster's spread and box from the tree sample's rows in its leaf (points.py)
        xs_tree = con.execute(f"SELECT {comma(f'CAST({ident(v)} AS DOUBLE)' for v in quant)} FROM ({tree_rows}) "
                              f"ORDER BY {_P}rid").fetchnumpy()
        xs_tree = np.column_stack([np.asarray(xs_tree[k], dtype=float) for k in xs_tree])
        means = np.column_stack([clusters.column(v).to_numpy() for v in quant])
        cov, lo, hi = points.leaf_stats(tree.leaf_of, xs_tree, clusters.column(f"{_P}node").to_numpy(), means)
        pr = points.pairs(clusters, list(m.design.variables), quant, cov, lo, hi, spec.weight,
                          spec.size - n_clusters, spec.family, theta0,
                          lambda t: _design_rows(con, t, m, names["points"])[0])
        pts, cl = pr.table, pr.cluster
    else:
        pts = pa.table([clusters.column(v) for v in m.design.variables] + [clusters.column(f"{_P}w")],
                       names=list(m.design.variables) + [spec.weight])
        cl = np.arange(n_clusters)

    def coords_of(points: pa.Table) -> np.ndarray:
        """Coordinates of pseudo-points (rows of ``points``, in order), computed as the rows' were."""
        view = names["points"]
        con.register(view, points.append_column(f"{_P}i", pa.array(np.arange(points.num_rows))))
        try:
            q = coords_sql(f"SELECT *, 0 AS {_P}cell, {m.y} AS {_P}y FROM {ident(view)}", [f"{_P}i"])
            got = con.execute(f"SELECT {comma(f'{_P}c{r}' for r in range(d))} FROM ({q}) ORDER BY {_P}i").fetchnumpy()
        finally:
            con.unregister(view)
        return np.column_stack([np.asarray(got[f"{_P}c{r}"], dtype=float) for r in range(d)])

    wp = pts.column(spec.weight).to_numpy()

    def summed(C: np.ndarray) -> np.ndarray:  # per point -> weighted sum per cluster
        out = np.zeros((n_clusters, C.shape[1]))
        np.add.at(out, cl, C * wp[:, None])
        return out

    # profile match: each cluster's summed profile vs its pseudo-points' weighted sum, in the d leading
    # principal directions of the profiles (they hold all but a sliver of the profile variance)
    spread = np.linalg.norm(S - w[:, None] * (S.sum(0) / w.sum()), axis=0)
    match = lambda R: (float(np.linalg.norm(R) / max(np.linalg.norm(spread), 1e-300)),  # noqa: E731
                       float(np.linalg.norm(R[:, 0]) / max(spread[0], 1e-300)))
    prof_resid, level_resid = match(S - summed(coords_of(pts)))
    refined = None
    if movable:
        box = lambda fn: np.column_stack([clusters.column(f"{_P}{fn}{quant.index(v)}").to_numpy()  # noqa: E731
                                          for v in movable])
        pts, R = _refine(pts, cl, movable, box("lo"), box("hi"), wp, S, coords_of)
        refined = match(R)[0]
    # ILDS's next centre: one Newton step from theta_0 with the full data's score (summed in the
    # pass) and Sigma_0; the calibration makes it the squashed table's MLE (points.py)
    cov0 = chol @ chol.T
    score = np.array([float(np.sum(clusters.column(f"{_P}u{j}").to_numpy())) for j in range(p)])
    theta1 = theta0 + cov0 @ score / scale
    step = float(np.max(np.abs(theta1 - theta0) / np.sqrt(np.clip(np.diag(cov0), 1e-300, None)), initial=0.0))
    dw = left = None
    if spec.calibrate:
        X, y = _design_rows(con, pts, m, names["points"])
        cells = clusters.column(f"{_P}cellid").to_numpy()[cl]
        moves = None
        mv = [j for j, v in enumerate(quant) if ident(v) not in m.y]  # the response stays put
        if pr is not None and mv:
            names_mv = [quant[j] for j in mv]

            def rows_at(x: np.ndarray) -> np.ndarray:
                t = pts
                for j, v in enumerate(names_mv):
                    t = t.set_column(t.schema.get_field_index(v), v, pa.array(x[:, j]))
                return _design_rows(con, t, m, names["points"])[0]

            sub = np.ix_(np.arange(n_clusters), mv, mv)
            moves = points.Moves(np.column_stack([pts.column(v).to_numpy() for v in names_mv]),
                                 pr.jac[:, :, mv][cl], pr.cov[sub][cl], pr.lo[:, mv][cl], pr.hi[:, mv][cl], rows_at)
        wp, xs, dw, left = points.calibrate(X, y, wp, cells, spec.family, theta1, moves)
        pts = pts.set_column(pts.schema.get_field_index(spec.weight), spec.weight, pa.array(wp))
        if xs is not None:
            for j, v in enumerate(names_mv):
                pts = pts.set_column(pts.schema.get_field_index(v), v, pa.array(xs[:, j]))
    it = LdsIteration(theta0, ds, df, pts.num_rows, prof_resid, level_resid, time.perf_counter() - t0,
                      "exact" if quad is None else "second-order", rel, refined, step, n_clusters, dw, left, theta1)
    return pts, it, K, theta1


@dataclass(frozen=True)
class LdsReport:
    """How an LDS run went: size, passes over the data, seconds per stage, each iteration's
    design centre, change and profile-match residuals."""

    params: dict
    n_rows: int
    n_points: int
    n_cells: int
    design_points: int
    sample_rows: int
    passes: int
    timings: dict[str, float]
    iterations: tuple[LdsIteration, ...]
    exog_names: tuple[str, ...]

    @property
    def n_regions(self) -> int:
        """The clusters are the regions (two pseudo-points each with ``points=2``)."""
        return self.iterations[-1].n_clusters if self.iterations else self.n_points

    def summary(self) -> str:
        lines = [f"rows N        {self.n_rows:,}",
                 f"points M      {self.n_points:,}   (reduction {self.n_rows / max(self.n_points, 1):,.1f}x; "
                 f"asked for {self.params['size']:,})",
                 f"model         {self.params['formula']}  [{self.params['family']}], {len(self.exog_names)} "
                 f"parameters, {self.n_cells:,} cells, {self.design_points} design points",
                 f"passes        {self.passes} over the data (sample of {self.sample_rows:,} rows, "
                 f"init={self.params['init']})"]
        for i, it in enumerate(self.iterations, 1):
            ch = "" if it.change_se is None else f", Newton step max {it.change_se:.3g} SE"
            if it.weight_change is not None:
                ch += f", weights calibrated (max change {it.weight_change:.1%})"
            bound = "" if it.profile_error is None else f" (max error {it.profile_error:.1e} of the spread)"
            ref = "" if it.refined_resid is None else f", {it.refined_resid:.2e} refined"
            lines.append(f"iteration {i}   ds={it.ds:.3g} df={it.df:.3g}: {it.n_points:,} points in "
                         f"{it.n_clusters:,} clusters, {it.profiles} "
                         f"profiles{bound}, profile-match residual {it.profile_resid:.2e} "
                         f"(level {it.level_resid:.2e}){ref}{ch}, {it.seconds:.2f}s")
        lines.append("time          " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def _fit(con, from_sql: str, design, family: str, weight_sql: str | None = None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence of a deliberate one-step fit, separation in a sample
        return fit_design(con, from_sql, design, family, weight_sql, **kw)


def squash_lds_to_arrow(con: duckdb.DuckDBPyConnection, source: object, spec: LdsSpec,
                        show_progress: bool = False) -> tuple[pa.Table, LdsReport]:
    """Run LDS (and ILDS iterations) on ``source``; nothing is written. Temporary tables are dropped."""
    timings: dict[str, float] = {}
    tag = uuid.uuid4().hex[:12]
    names = {k: f"{_P}lds_{k}_{tag}" for k in ("cells", "sample", "nodes", "points")}
    src = resolve(con, source)
    try:
        t = time.perf_counter()
        m = build_model(con, src, spec)
        p = len(m.design.exprs)
        if spec.size < p:
            raise InputError(f"size={spec.size:,} is below the number of model parameters ({p}); "
                             "a squashed table needs at least one pseudo-point per parameter")
        with progress_bar(con, "cells", show_progress):
            cells_pass(con, m, spec, names["cells"])
        passes = 1
        if spec.size > m.n_rows:
            raise InputError(f"size={spec.size:,} exceeds the {m.n_rows:,} complete rows of {src.label}")
        if len(m.cells) > spec.size:
            raise InputError(f"size={spec.size:,} is below the number of model cells ({len(m.cells):,}: "
                             f"categorical levels{' x response levels' if spec.family == 'binomial' else ''}); "
                             "each cell needs a pseudo-point of its own")
        timings["cells"] = time.perf_counter() - t
        # pass 2: the hash-seeded Bernoulli sample
        t = time.perf_counter()
        want = spec.sample_size or max(20_000, 20 * spec.size, 10 * p, m.n_rows // 10)
        tree_want = min(want, max(20_000, 20 * spec.size))
        rate = min(1.0, want / m.n_rows)
        # re-hash with the seed: DuckDB's multi-argument hash keeps the top bits of the first ones
        h = (f"hash(xor(hash({comma([ident(v) for v in m.design.variables])}), "
             f"hash({literal(int(spec.seed))}::BIGINT)))")
        cut = "" if rate >= 1.0 else f" WHERE {_P}h < {int(rate * 2.0 ** 64)}::UBIGINT"
        keyed = keyed_sql(m)
        with progress_bar(con, "sample", show_progress):
            con.execute(f"CREATE TEMP TABLE {ident(names['sample'])} AS "
                        f"{with_cell_sql(m, f'SELECT * FROM (SELECT *, {h} AS {_P}h FROM ({keyed})){cut}', names['cells'])}")
        passes += 1
        n_s = con.execute(f"SELECT count(*) FROM {ident(names['sample'])}").fetchall()[0][0]
        # the tree is fitted to a sub-sample (same hash, lower cut) of at most ~tree_want rows, the
        # principal directions to one of at most ~50k of those
        cut = lambda n: min(int(min(1.0, n / m.n_rows) * 2.0 ** 64), 2 ** 64 - 1)  # noqa: E731
        cuts = (cut(min(tree_want, 50_000)), cut(tree_want))
        if n_s < p + 1:
            raise InputError(f"the sample has {n_s} rows, too few for {p} parameters; raise sample_size")
        timings["sample"] = time.perf_counter() - t
        # the initial estimate
        t = time.perf_counter()
        if spec.init == "mle":
            with progress_bar(con, "init", show_progress):
                res = _fit(con, src.sql, m.design, spec.family)
            passes += int(getattr(res, "n_passes", res.n_iter))
        else:
            res = _fit(con, ident(names["sample"]), m.design, spec.family, literal(m.n_rows / n_s))
            if spec.init == "step":
                with progress_bar(con, "init", show_progress):
                    res = _fit(con, src.sql, m.design, spec.family, start=res.params, max_iter=1)
                passes += int(getattr(res, "n_passes", 1))
        theta0, chol = _design_from_fit(res)
        scale = float(getattr(res, "scale", 1.0) or 1.0)
        timings["init"] = time.perf_counter() - t
        its: list[LdsIteration] = []
        ds, df = spec.ds, spec.df
        table = None
        K = 0
        theta1 = theta0
        for i in range(spec.iterations):
            if i > 0:
                # re-centre on the Newton step from theta_0 with the full data's score (summed in the
                # pass) and the first estimate's covariance (see the module notes: the squashed table's
                # own information is too small for its MLE to be the next centre)
                theta0 = theta1
                ds, df = ds * spec.cooling, df * spec.cooling
            t = time.perf_counter()
            with progress_bar(con, f"squash {i + 1}", show_progress):
                table, it, K, theta1 = _squash_once(con, m, spec, theta0, chol, scale, ds, df, names["sample"],
                                                    cuts, names["cells"], names)
            passes += 1
            its.append(it)
            timings[f"squash{i + 1}" if spec.iterations > 1 else "squash"] = time.perf_counter() - t
    finally:
        for k in ("cells", "sample", "nodes"):
            try:
                con.execute(f"DROP TABLE IF EXISTS {ident(names[k])}")
            except duckdb.Error:
                pass
        src.close()
    report = LdsReport(spec.as_dict(), m.n_rows, table.num_rows, len(m.cells), K, int(n_s), passes, timings,
                       tuple(its), tuple(m.design.names))
    return table, report
