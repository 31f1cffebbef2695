"""Likelihood-based data squashing (LDS, Madigan et al.) and its iterated form (ILDS), in DuckDB.

For a stated GLM (formula + family) every row gets a *likelihood profile*: its log-likelihood at
the K points of a central composite design around an initial estimate theta_0 (centre, 2p star
points at +-ds, factorial corners at distance df, in whitened standard-error units: theta = theta_0 + L u
with L L' the estimated covariance of theta_0, so one unit is one standard error along each
principal direction). Rows with similar profiles are interchangeable for likelihood-based
inference near theta_0, so they are clustered and each cluster becomes one pseudo-point at the
cluster mean of the model's variables with weight = cluster size.

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
   one leaf per wanted cluster); then one GROUP BY leaf gives cluster sizes, variable means and the
   cluster's summed profile. Cost: the coordinates are computed from the K non-linear terms A(eta_k)
   with list dot products (``_coords_sql``: one per mirrored pair of design points, one per
   coordinate), or, where that is within 1% of every coordinate's spread on the sample (large N:
   the design points are close), from the profile's second-order expansion around eta_0, with one
   softplus per row instead of K; the descent is one ``list_extract`` projection per tree level
   against a one-row table of node lists (no join per level).

The paper's optional refinement (``refine=True``) moves each pseudo-point's quantitative variables,
within its cluster's range, so that weight x its profile matches the cluster's summed profile in
the d coordinates (damped Gauss-Newton, all clusters at once). On 6 paper-structure data sets of
40k rows at M = 200 it lowered the match residual by ~35% (there are more coordinates than movable
variables) but not the coefficient error (geometric-mean MSE 29 against 21 without), so it is off
by default. Not done: a Lloyd-style re-assignment pass after the tree (the leaves are the clusters).

ILDS (``iterations=k``) re-centres the design and reruns the squash pass, shrinking ds and df by
``cooling`` each time. The paper re-centres on the squashed table's MLE; here that diverged
(relative error 4 SE -> 13 SE -> separation): one pseudo-point per cluster keeps the score at
theta_0 but not the within-cluster information, so the squashed MLE is theta_0 - I_sq^-1 S(theta_0)
with I_sq < I_full, and the error map I - I_sq^-1 I_full has eigenvalues below -1 in the
directions the clusters resolve least. The new centre is instead the Newton step
theta_0 + Sigma_0 S_sq(theta_0): the squashed table's score (one tiny query) with the first
estimate's covariance Sigma_0. On 100k paper-structure rows at M = N/200: LDS MSE 7.3, 3 ILDS
iterations 0.24 (refit-on-squashed-MLE ILDS: 134 and worse).
"""
from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass, replace

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..io.progress import progress as progress_bar
from ..io.source import resolve
from ..model.families import mean_sql
from ..model.irls import fit_design
from ..sql.build import linear_predictor
from ..sql.names import PREFIX as _P
from ..sql.quote import comma, ident, literal
from .cells import Model, build_model, cells_pass, keyed_sql, with_cell_sql
from .design import ccd
from . import profiles
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
    change_se: float | None = None  # max |theta_new - theta_0| / SE after refitting on this table


def _design_from_fit(res) -> tuple[np.ndarray, np.ndarray]:
    cov = np.asarray(res.cov_params(), dtype=float)
    cov = (cov + cov.T) / 2
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov)
        chol = v * np.sqrt(np.clip(w, 0, None))
    return np.asarray(res.params, dtype=float), chol


def _refine(clusters: pa.Table, movable: list[str], w: np.ndarray, S: np.ndarray, coords_of,
            steps: int = 4) -> tuple[pa.Table, np.ndarray]:
    """The paper's optional refinement: move each pseudo-point's quantitative variables (within its
    cluster's range) so that weight x its profile matches the cluster's summed profile, in the d
    profile coordinates; damped Gauss-Newton with forward-difference Jacobians, all clusters at
    once (one small SQL query per step). A cluster keeps its last point that lowered its residual."""
    X = np.column_stack([clusters.column(v).to_numpy() for v in movable])
    lo = np.column_stack([clusters.column(f"{_P}min{j}").to_numpy() for j in range(len(movable))])
    hi = np.column_stack([clusters.column(f"{_P}max{j}").to_numpy() for j in range(len(movable))])
    h = 1e-6 * np.maximum(np.abs(X), (hi - lo).max(axis=0, initial=0.0) + 1e-300)
    n, q = X.shape

    def with_x(Z: np.ndarray, rows: np.ndarray) -> pa.Table:
        t = clusters.take(pa.array(rows))
        for j, v in enumerate(movable):
            t = t.set_column(t.schema.get_field_index(v), v, pa.array(Z[:, j]))
        return t

    R = S - coords_of(clusters) * w[:, None]
    best = np.einsum("ij,ij->i", R, R)
    for _ in range(steps):
        # base points and the q perturbed copies of every cluster, evaluated in one query
        rows = np.tile(np.arange(n), q + 1)
        Z = np.tile(X, (q + 1, 1))
        for j in range(q):
            Z[(j + 1) * n:(j + 2) * n, j] += h[:, j]
        c = coords_of(with_x(Z, rows)).reshape(q + 1, n, -1)
        J = (c[1:] - c[0]).transpose(1, 2, 0) / h[:, None, :] * w[:, None, None]  # n x d x q
        r = S - c[0] * w[:, None]
        A = np.einsum("ndi,ndj->nij", J, J)
        g = np.einsum("ndi,nd->ni", J, r)
        A += 1e-6 * np.einsum("nii->n", A)[:, None, None] * np.eye(q) + 1e-300 * np.eye(q)
        X_new = np.clip(X + np.linalg.solve(A, g[..., None])[..., 0], lo, hi)
        R_new = S - coords_of(with_x(X_new, np.arange(n))) * w[:, None]
        new = np.einsum("ij,ij->i", R_new, R_new)
        better = new < best
        X[better], R[better], best[better] = X_new[better], R_new[better], new[better]
        if not better.any():
            break
    return with_x(X, np.arange(n)), R


def _squash_once(con, m: Model, spec: LdsSpec, theta0, chol, ds, df, sample_table: str, cuts: tuple[int, int],
                 cells_table: str, names: dict) -> tuple[pa.Table, LdsIteration, int]:
    """One squash pass. ``cuts``: hash cuts of the sample's rows for the principal directions (and
    the second-order check) and for the tree (the first is a subset of the second)."""
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
    leaves = allocate(m.cells, spec.size, counts)
    tree = fit_tree(C, scells, leaves, len(m.cells), spec.branching)
    nodes_table(con, tree, names["nodes"], spec.branching)

    def coords_sql(from_sql: str, carry: list[str]) -> str:
        return profiles.coords_sql(m, spec.family, theta0, offsets, basis, from_sql, carry, quad)

    # the squash pass over all rows: profile -> coordinates -> tree descent -> one GROUP BY
    rows = coords_sql(with_cell_sql(m, keyed_sql(m), cells_table), [])
    walked = descend_sql(rows, tree, names["nodes"], spec.branching, d)
    outs = [f"any_value({ident(v)}) AS {ident(v)}" for v in m.categorical]
    outs += [f"avg(CAST({ident(v)} AS DOUBLE)) AS {ident(v)}" for v in m.quantitative]
    movable = [v for v in m.quantitative if ident(v) not in m.y] if spec.refine else []
    outs += [f"{fn}(CAST({ident(v)} AS DOUBLE)) AS {_P}{fn}{j}" for j, v in enumerate(movable) for fn in ("min", "max")]
    sums = [f"sum({_P}c{r}) AS {_P}s{r}" for r in range(d)]
    agg = (f"SELECT {_P}node, count(*)::DOUBLE AS {_P}w, {comma(outs)}, {comma(sums)} "
           f"FROM ({walked}) GROUP BY {_P}node ORDER BY {_P}node")
    clusters = con.sql(agg).to_arrow_table()
    w = clusters.column(f"{_P}w").to_numpy()
    S = np.column_stack([clusters.column(f"{_P}s{r}").to_numpy() for r in range(d)])  # sum of (P B - mu) / sd

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

    # profile match: each cluster's summed profile vs its pseudo-point's, in the d leading
    # principal directions of the profiles (they hold all but a sliver of the profile variance)
    spread = np.linalg.norm(S - w[:, None] * (S.sum(0) / w.sum()), axis=0)
    match = lambda R: (float(np.linalg.norm(R) / max(np.linalg.norm(spread), 1e-300)),  # noqa: E731
                       float(np.linalg.norm(R[:, 0]) / max(spread[0], 1e-300)))
    prof_resid, level_resid = match(S - coords_of(clusters) * w[:, None])
    refined = None
    if movable:
        clusters, R = _refine(clusters, movable, w, S, coords_of)
        refined = match(R)[0]
    cols = [clusters.column(v) for v in m.design.variables] + [clusters.column(f"{_P}w")]
    table = pa.table(cols, names=list(m.design.variables) + [spec.weight])
    it = LdsIteration(theta0, ds, df, table.num_rows, prof_resid, level_resid, time.perf_counter() - t0,
                      "exact" if quad is None else "second-order", rel, refined)
    return table, it, K


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
        """One pseudo-point per cluster: the clusters are the regions."""
        return self.n_points

    def summary(self) -> str:
        lines = [f"rows N        {self.n_rows:,}",
                 f"points M      {self.n_points:,}   (reduction {self.n_rows / max(self.n_points, 1):,.1f}x; "
                 f"asked for {self.params['size']:,})",
                 f"model         {self.params['formula']}  [{self.params['family']}], {len(self.exog_names)} "
                 f"parameters, {self.n_cells:,} cells, {self.design_points} design points",
                 f"passes        {self.passes} over the data (sample of {self.sample_rows:,} rows, "
                 f"init={self.params['init']})"]
        for i, it in enumerate(self.iterations, 1):
            ch = "" if it.change_se is None else f", refit moved theta by max {it.change_se:.3g} SE"
            bound = "" if it.profile_error is None else f" (max error {it.profile_error:.1e} of the spread)"
            ref = "" if it.refined_resid is None else f", {it.refined_resid:.2e} refined"
            lines.append(f"iteration {i}   ds={it.ds:.3g} df={it.df:.3g}: {it.n_points:,} points, {it.profiles} "
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
    names = {k: f"{_P}lds_{k}_{tag}" for k in ("cells", "sample", "nodes", "points", "squashed")}
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
        for i in range(spec.iterations):
            if i > 0:
                t = time.perf_counter()
                con.register(names["squashed"], table)
                try:
                    score = _score(con, ident(names["squashed"]), m, spec, theta0)
                finally:
                    con.unregister(names["squashed"])
                # Newton step from theta_0 with the squashed table's score and the first estimate's
                # information (see the module notes: the squashed table's own information is too small)
                cov0 = chol @ chol.T
                new = theta0 + cov0 @ score / scale
                se = np.sqrt(np.clip(np.diag(cov0), 1e-300, None))
                its[-1] = _with_change(its[-1], float(np.max(np.abs(new - theta0) / se)))
                theta0 = new
                ds, df = ds * spec.cooling, df * spec.cooling
                timings["refit"] = timings.get("refit", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            with progress_bar(con, f"squash {i + 1}", show_progress):
                table, it, K = _squash_once(con, m, spec, theta0, chol, ds, df, names["sample"], cuts,
                                            names["cells"], names)
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


def _score(con, from_sql: str, m: Model, spec: LdsSpec, theta: np.ndarray) -> np.ndarray:
    """The weighted score X'F(y - mu) at ``theta`` over a (small) squashed table."""
    xs = [f"({e})" for e in m.design.exprs]
    eta = linear_predictor(theta, m.design.exprs)
    r = f"CAST({ident(spec.weight)} AS DOUBLE) * ({m.y} - {mean_sql(spec.family, eta)})"
    row = con.execute(f"SELECT {comma(f'fsum({r} * {x})' for x in xs)} FROM {from_sql}").fetchall()[0]
    return np.asarray(row, dtype=float)


def _with_change(it: LdsIteration, change: float) -> LdsIteration:
    return replace(it, change_se=change)
