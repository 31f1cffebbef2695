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

import math
import re
import time
import uuid
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from ._errors import InputError
from ._source import Source, is_numeric, resolve
from ._sql import comma, ident, literal

INITS = ("sample", "step", "mle")
FAMILIES = ("binomial", "poisson", "gaussian")
_P = "__dq_"  # reserved prefix for internal columns
_CENTRE_ROWS = True  # poisson/gaussian: cluster on row-centred profiles (40k rows, M = 200: poisson MSE 121 -> 4.6)
_WHITEN = 0.7  # profile coordinates scaled by sd**(1 - _WHITEN) relative to the first: see _basis
# Second-order profiles when, on the sample's rows (<= 50k), they are within this fraction of every
# coordinate's within-cell spread of the exact ones: a row can then only change leaf when it lies within
# ~1% of a split, whose threshold is itself a quantile of ~20 sample rows per leaf (its standard error
# is 10-20% of the node's spread).
_TAYLOR_TOL = 1e-2
PROFILES = ("auto", "exact")


@dataclass(frozen=True)
class LdsSpec:
    """What LDS squashes and how; validated once here (see :func:`duckquash.squash`, ``method="lds"``).

    ``size`` is the wanted number of pseudo-points M (the output has at most M rows, usually a few
    fewer when tiny cells or tied profiles leave leaves empty). ``ds``/``df`` are the star and
    factorial distances in standard-error units; ``cooling`` multiplies both at each ILDS iteration.
    ``sample_size`` (for theta_0) defaults to ``max(20000, 20 * size, 10 * p, N / 10)`` rows
    (capped at N); the profile tree is fitted to a sub-sample of ``max(20000, 20 * size)`` of them.
    ``branching`` is the k-d tree's fan-out per level (fewer levels, more comparisons per level).
    ``refine``: move each pseudo-point (its quantitative variables, within the cluster's range) so
    that weight x its profile matches the cluster's summed profile (the paper's optional step).
    ``profiles``: ``"auto"`` computes the rows' profiles from their second-order expansion around
    eta_0 (binomial, gaussian) when, on up to 50k sample rows, it is within 1% of every coordinate's
    within-cell spread of the exact profile, else exactly; ``"exact"`` always evaluates the log-likelihood at every
    design point.

    Defaults: geometric mean of the main-effects MSE (vs the full fit) over 12 paper-structure data
    sets of 40k rows at M = 200 (a uniform sample: ~250), LDS / ILDS(3): ds = df = 2: 49 / 0.90;
    3: 40 / 0.84; 4: 27 / 0.87; 6: 17 / 0.86; 8: 15 / 0.91 (corners +-2 on each axis, i.e. at
    distance 6.3 for p = 10: 21 / 0.83). Larger designs help one-pass LDS a little but make the
    second-order profiles less accurate; 4 keeps them within 1% on 10M rows. Cooling 0.5: ILDS(3)
    0.87 on the same 12 data sets (0.35: 0.98; 0.7: 0.89). Branching 4 (LDS 7.3 vs 11.8 for binary
    splits, ILDS(3) 0.20 vs 0.24) was measured on 100k rows at M = 500 with the earlier scaling.
    """

    formula: str
    size: int
    family: str = "binomial"
    iterations: int = 1
    init: str = "sample"
    ds: float = 4.0
    df: float = 4.0
    cooling: float = 0.5
    seed: int = 0
    weight: str = "weight"
    sample_size: int | None = None
    branching: int = 4
    profiles: str = "auto"
    refine: bool = False
    levels: dict | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        if not isinstance(self.formula, str) or "~" not in self.formula:
            raise InputError(f"method='lds' needs formula='y ~ x1 + ...' naming the model, got {self.formula!r}")
        fam = str(self.family).lower()
        if fam not in FAMILIES:
            raise InputError(f"family must be one of {list(FAMILIES)}, got {self.family!r}")
        set_("family", fam)
        init = str(self.init).lower()
        if init not in INITS:
            raise InputError(f"init must be one of {list(INITS)}, got {self.init!r}")
        set_("init", init)
        prof = str(self.profiles).lower()
        if prof not in PROFILES:
            raise InputError(f"profiles must be one of {list(PROFILES)}, got {self.profiles!r}")
        set_("profiles", prof)
        for name, lo in (("size", 1), ("iterations", 1), ("branching", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
            set_(name, int(v))
        if self.sample_size is not None and (isinstance(self.sample_size, bool) or
                                             not isinstance(self.sample_size, (int, np.integer))
                                             or self.sample_size < 10):
            raise InputError(f"sample_size must be an integer >= 10, got {self.sample_size!r}")
        for name in ("ds", "df", "cooling"):
            try:
                v = float(getattr(self, name))
            except (TypeError, ValueError):
                raise InputError(f"{name} must be a number, got {getattr(self, name)!r}") from None
            if not math.isfinite(v) or v <= 0 or (name == "cooling" and v > 1):
                raise InputError(f"{name} must be a finite number > 0{' and <= 1' if name == 'cooling' else ''}, "
                                 f"got {getattr(self, name)!r}")
            set_(name, v)
        if not isinstance(self.refine, bool):
            raise InputError(f"refine must be True or False, got {self.refine!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.weight, str) or not self.weight or self.weight.startswith(_P):
            raise InputError(f"weight must be a column name not starting with {_P!r}, got {self.weight!r}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---------------------------------------------------------------- the design

def fractional_corners(p: int, max_full: int = 5) -> np.ndarray:
    """Factorial corners (+-1) for p factors: the full 2^p when p <= ``max_full``, otherwise a
    resolution IV fraction: the fold-over of a saturated resolution III design with 2^r >= p + 1
    runs (base factors plus products of them), 2^(r+1) runs in all (p = 10: 32, p = 50: 128)."""
    if p <= max_full:
        grid = np.array(np.meshgrid(*[[-1.0, 1.0]] * p, indexing="ij")).reshape(p, -1).T
        return grid
    r = max(1, math.ceil(math.log2(p + 1)))
    base = np.array(np.meshgrid(*[[-1.0, 1.0]] * r, indexing="ij")).reshape(r, -1).T  # 2^r x r
    subsets = [s for s in range(1, 2 ** r)]
    # singletons (the base factors) first, then the highest-order interactions (best aliasing)
    subsets.sort(key=lambda s: (bin(s).count("1") != 1, -bin(s).count("1"), s))
    cols = [np.prod(base[:, [j for j in range(r) if s >> j & 1]], axis=1) for s in subsets[:p]]
    half = np.stack(cols, axis=1)
    return np.vstack([half, -half])


def ccd(p: int, ds: float, df: float) -> np.ndarray:
    """Central composite design in whitened units: the centre, star points +-ds on each axis and
    factorial corners at distance df from the centre (+-df / sqrt(p) on each axis), so every design
    point lies within df or ds standard errors of theta_0 whatever p is. The earlier corners at +-2
    on each axis (distance 6.3 for p = 10) gave similar accuracy (see :class:`LdsSpec`), but profiles
    that a second-order expansion cannot follow on 10M rows (errors up to 1.3% of a spread)."""
    star = np.vstack([ds * np.eye(p), -ds * np.eye(p)])
    return np.vstack([np.zeros((1, p)), star, df / math.sqrt(p) * fractional_corners(p)])


# ---------------------------------------------------------------- the model and its cells

@dataclass
class _Model:
    src: Source
    design: object  # duckquash._formula.Design
    where: str
    y: str
    categorical: tuple[str, ...]      # cell keys among the variables (original types kept)
    quantitative: tuple[str, ...]     # variables averaged within a cluster (DOUBLE)
    cell_keys: tuple[str, ...]        # SQL expressions naming a cell (categoricals, y for binomial)
    n_rows: int = 0
    cells: list = field(default_factory=list)  # (cell id, count)


_C_ARG = re.compile(r"\bC\(\s*(?:Q\(\s*['\"]([^'\"]+)['\"]\s*\)|`([^`]+)`|([A-Za-z_][A-Za-z0-9_.]*))")


def _categorical_vars(formula: str, variables: tuple[str, ...], columns: dict[str, str]) -> tuple[str, ...]:
    named = {next(g for g in m.groups() if g) for m in _C_ARG.finditer(formula)}
    return tuple(v for v in variables if v in named or not is_numeric(columns[v]))


def _model(con: duckdb.DuckDBPyConnection, src: Source, spec: LdsSpec) -> _Model:
    from ._formula import build_design

    design = build_design(con, src.sql, spec.formula, levels=spec.levels)
    if design.response is None:
        raise InputError(f"method='lds' needs a response: {spec.formula!r} has no left-hand side")
    if spec.weight in design.variables:
        raise InputError(f"the weight column name {spec.weight!r} is also a model variable; pick another")
    bad = [v for v in design.variables if v.startswith(_P)]
    if bad:
        raise InputError(f"column name(s) {bad} use the prefix {_P!r}, reserved for duckquash")
    where = getattr(design, "where", None) or " AND ".join(f"{ident(v)} IS NOT NULL" for v in design.variables)
    cats = _categorical_vars(spec.formula, design.variables, src.columns)
    quant = tuple(v for v in design.variables if v not in cats)
    keys = tuple(ident(c) for c in cats) + ((f"({design.response})",) if spec.family == "binomial" else ())
    return _Model(src, design, where, f"({design.response})", cats, quant, keys)


def _keyed_sql(m: _Model) -> str:
    """Complete rows of the source: the model's variables (bare names), cell keys and y."""
    keys = [f"{k} AS {_P}k{i}" for i, k in enumerate(m.cell_keys)]
    return (f"SELECT {comma([ident(v) for v in m.design.variables] + keys)}, {m.y} AS {_P}y "
            f"FROM {m.src.sql} WHERE {m.where}")


def _with_cell_sql(m: _Model, keyed: str, cells_table: str) -> str:
    if not m.cell_keys:
        return f"SELECT *, 0 AS {_P}cell FROM ({keyed})"
    cond = " AND ".join(f"{_P}r.{_P}k{i} = {_P}c.{_P}k{i}" for i in range(len(m.cell_keys)))
    return (f"SELECT {_P}r.*, {_P}c.{_P}cell FROM ({keyed}) {_P}r "
            f"JOIN {ident(cells_table)} {_P}c ON {cond}")


def _cells_pass(con: duckdb.DuckDBPyConnection, m: _Model, spec: LdsSpec, cells_table: str) -> None:
    """Pass 1: rows per cell into ``cells_table`` (cell id by sorted key), response check, N."""
    y = f"{_P}y"
    bad = {"binomial": f"{y} NOT IN (0.0, 1.0)", "poisson": f"{y} < 0.0 OR isnan({y})",
           "gaussian": f"NOT isfinite({y})"}[spec.family]
    knames = [f"{_P}k{i}" for i in range(len(m.cell_keys))]
    group = f"GROUP BY {comma(knames)}" if knames else ""
    order = comma(knames) if knames else "1"
    con.execute(f"""CREATE TEMP TABLE {ident(cells_table)} AS
        SELECT *, (row_number() OVER (ORDER BY {order}) - 1)::INTEGER AS {_P}cell
        FROM (SELECT {comma(knames + ['count(*) AS ' + _P + 'n'])}, count(*) FILTER (WHERE {bad}) AS {_P}bad
              FROM ({_keyed_sql(m)}) {group})""")
    rows = con.execute(f"SELECT {_P}cell, {_P}n, {_P}bad FROM {ident(cells_table)} ORDER BY 1").fetchall()
    n = int(sum(r[1] for r in rows))
    if n == 0:
        raise InputError(f"no complete rows for {spec.formula!r} in {m.src.label}")
    nbad = int(sum(r[2] for r in rows))
    if nbad:
        what = {"binomial": "0 or 1", "poisson": "a count >= 0", "gaussian": "finite"}[spec.family]
        raise InputError(f"the response {m.design.response_name!r} must be {what} for family={spec.family!r}; "
                         f"{nbad:,} row(s) are not")
    m.n_rows = n
    m.cells = [(int(r[0]), int(r[1])) for r in rows]


# ---------------------------------------------------------------- profiles as SQL

def _rows_sql(m: _Model, theta0: np.ndarray, chol: np.ndarray, from_sql: str, carry: tuple[str, ...] = ()) -> str:
    """Add eta_0 = x'theta_0 and the whitened design z = L'x to rows that have the model's variables
    (bare names), ``__dq_y`` and ``__dq_cell``; ``carry`` lists further columns to keep."""
    xs = [f"({e})" for e in m.design.exprs]
    p = len(xs)
    e0 = " + ".join(f"{literal(float(b))} * {x}" for b, x in zip(theta0, xs))
    zs = []
    for j in range(p):
        t = [f"{literal(float(chol[i, j]))} * {xs[i]}" for i in range(p) if chol[i, j] != 0]
        zs.append(f"({' + '.join(t) if t else '0.0'}) AS {_P}z{j}")
    keep = [ident(v) for v in m.design.variables] + [f"{_P}cell", f"{_P}y"] + list(carry)
    return f"SELECT {comma(keep)}, ({e0}) AS {_P}e0, {comma(zs)} FROM ({from_sql})"


def _profile_sql(family: str, U: np.ndarray, rows_sql: str) -> str:
    """Add ``__dq_l{k}``: the row's log-likelihood at theta_0 + L u_k for each design point u_k
    (``loglik_sql``); the linear predictors are computed once in an inner SELECT."""
    from ._families import loglik_sql

    etas = []
    for k, u in enumerate(U):
        terms = [f"{_P}e0"] + [f"{literal(float(c))} * {_P}z{j}" for j, c in enumerate(u) if c != 0]
        etas.append(f"({' + '.join(terms)}) AS {_P}h{k}")
    ls = [f"{loglik_sql(family, f'{_P}y', f'{_P}h{k}')} AS {_P}l{k}" for k in range(len(U))]
    return f"SELECT *, {comma(ls)} FROM (SELECT *, {comma(etas)} FROM ({rows_sql}))"


@dataclass(frozen=True)
class _Basis:
    """Profile coordinates c = (P @ B - mu) / sd, ``B`` (K x d) the leading principal directions of
    the sample's profiles; ``spread`` is each coordinate's within-cell sd."""

    B: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    spread: np.ndarray


def _basis(profiles: np.ndarray, cells: np.ndarray, p: int, centre_rows: bool = False) -> _Basis:
    """Leading principal directions of the within-cell centred profiles (d <= p + 1), and their scaling.

    With design points a few standard errors apart and large N, the raw profile distance is all
    level (the row's log-likelihood at theta_0, i.e. its eta_0): clustering on it alone gives
    slabs along eta_0, which keep the score at theta_0 but leave the other directions of x nearly
    unresolved, so the squashed information matrix is ill-conditioned. Whitening every direction
    (unit variance) loses the eta_0 resolution instead (Jensen bias of one mean point per cluster).
    The compromise: direction r is divided by sd_r ** _WHITEN * sd_0 ** (1 - _WHITEN), sd_r its
    spread *within cells* (the tree only ever splits within a cell). Geometric mean of the MSE
    over 12 paper-structure data sets of 40k rows at M = 200, LDS / ILDS(3): _WHITEN = 0.3:
    7,400 / 1.7; 0.5: 80 / 1.8; 0.7: 21 / 0.84; 0.85: 13 / 2.7; 1: 22 / 5.3. Scaling by the total
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
    sd = within ** _WHITEN * within[0] ** (1 - _WHITEN)
    return _Basis(B, mu, sd, within / sd)


def _list(v) -> str:
    return "[" + ", ".join(literal(float(a)) for a in v) + "]"


def _second_order_plan(exact: np.ndarray, lean: np.ndarray, full: np.ndarray, spread: np.ndarray
                       ) -> tuple[np.ndarray, float] | None:
    """Which coordinates need their quadratic term, and the largest error relative to the spread,
    judged on the sample's rows: exact coordinates, second-order ones without quadratic terms
    (``lean``) and with them where ``lean`` misses (``full``); None when some coordinate misses by
    more than _TAYLOR_TOL even with them (then the profiles are computed exactly)."""
    err = lambda c: np.abs(c - exact).max(axis=0, initial=0.0) / spread  # noqa: E731
    e_lean, e_full = err(lean), err(full)
    quad = e_lean > _TAYLOR_TOL
    worst = np.where(quad, e_full, e_lean)
    return (quad, float(worst.max(initial=0.0))) if np.all(worst <= _TAYLOR_TOL) else None


def _coords_sql(m: _Model, family: str, theta0: np.ndarray, offsets: np.ndarray, basis: _Basis, from_sql: str,
                carry: list[str], quad: np.ndarray | None = None) -> str:
    """Add the profile coordinates ``__dq_c{r}`` = ((P B)_r - mu_r) / sd_r without spelling out P.

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
        return _second_order_sql(family, theta0, offsets, basis, quad, inner, keep, cy)
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
        gs.append(f"list_dot_product({_P}x, {_list(o)}) AS {_P}g{len(gs)}")
        etas.append(f"{_P}e0 + {_P}g{seen[k]}")
    cexpr = []
    for r in range(B.shape[1]):
        w = np.concatenate([thetas.T @ B[:, r], -B[:, r]]) / sd[r]
        e = f"list_dot_product({_P}pw, {_list(w)})"
        if cy is not None:
            e += f" - {literal(float(B[:, r].sum() / sd[r]))} * {_P}cy"
        cexpr.append(f"({e} - {literal(float(mu[r] / sd[r]))}) AS {_P}c{r}")
    lin = (f"SELECT {comma(keep)}, {_P}y, {_P}x, list_dot_product({_P}x, {_list(theta0)}) AS {_P}e0"
           + "".join(f", {g}" for g in gs) + f" FROM ({inner})")
    yx = f"[{comma(f'{_P}y * {x}' for x in xs)}]"
    prof = (f"SELECT {comma(keep)}, list_concat({yx}, list_transform([{comma(etas)}], lambda v: {A})) AS {_P}pw"
            + (f", {cy} AS {_P}cy" if cy else "") + f" FROM ({lin})")
    return f"SELECT {comma(keep)}, {comma(cexpr)} FROM ({prof})"


def _second_order_sql(family: str, theta0: np.ndarray, offsets: np.ndarray, basis: _Basis, quad: np.ndarray,
                      inner: str, keep: list[str], cy: str | None) -> str:
    """The coordinates from the second-order expansion (see :func:`_coords_sql`); binomial and gaussian."""
    e0 = f"{_P}e0"
    eta0 = f"SELECT *, list_dot_product({_P}x, {_list(theta0)}) AS {e0} FROM ({inner})"
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
        dots.append(f"list_dot_product({_P}x, {_list(v)}) AS {_P}d{len(dots)}")
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
    return f"SELECT {comma(keep)}, {comma(cexpr)} FROM ({body})"


# ---------------------------------------------------------------- the profile tree

@dataclass(frozen=True)
class _Tree:
    """A k-d tree over profile coordinates, one root per cell.

    ``nodes``: internal nodes (id, dim (1-based), first child id, thresholds padded with +inf)."""

    nodes: list
    depth: int
    leaves: int


def _allocate(cells: list[tuple[int, int]], size: int, sample_counts: dict[int, int]) -> dict[int, int]:
    """Leaves per cell: proportional to its rows (largest remainder), at least 1, at most its rows."""
    n = sum(c for _, c in cells)
    raw = {cid: size * c / n for cid, c in cells}
    out = {cid: max(1, int(math.floor(v))) for cid, v in raw.items()}
    rest = size - sum(out.values())
    for cid in sorted(raw, key=lambda k: (-(raw[k] - math.floor(raw[k])), k))[:max(rest, 0)]:
        out[cid] += 1
    cap = dict(cells)
    return {cid: max(1, min(v, cap[cid], sample_counts.get(cid, 0))) for cid, v in out.items()}


def _fit_tree(coords: np.ndarray, cells: np.ndarray, leaves: dict[int, int], n_cells: int, b: int) -> _Tree:
    nodes: list = []
    next_id = [n_cells]
    depth = [0]
    total = [0]

    def build(node: int, rows: np.ndarray, want: int, level: int) -> None:
        if want <= 1 or rows.size < 2:
            total[0] += 1
            depth[0] = max(depth[0], level)
            return
        k = min(b, want, rows.size)
        parts = [want // k + (1 if j < want % k else 0) for j in range(k)]
        x = coords[rows]
        dim = int(np.argmax(x.var(axis=0)))
        v = x[:, dim]
        # inverted-CDF quantiles at cumsum(parts) / want (as np.quantile, without its overhead)
        pos = np.clip(np.ceil(v.size * (np.cumsum(parts)[:-1] / want)).astype(np.int64) - 1, 0, v.size - 1)
        thr = np.partition(v, pos)[pos] if pos.size else np.array([])
        first = next_id[0]
        next_id[0] += k
        bins = np.searchsorted(thr, v, side="right")  # number of thresholds <= v
        nodes.append((node, dim + 1, first, [float(t) for t in thr] + [math.inf] * (b - 1 - thr.size)))
        grouped = rows[np.argsort(bins, kind="stable")]
        ends = np.cumsum(np.bincount(bins, minlength=k)).tolist()
        for j in range(k):
            build(first + j, grouped[(ends[j - 1] if j else 0):ends[j]], parts[j], level + 1)

    for cid in range(n_cells):
        build(cid, np.flatnonzero(cells == cid), leaves.get(cid, 1), 0)
    return _Tree(nodes, depth[0], total[0])


def _nodes_table(con: duckdb.DuckDBPyConnection, tree: _Tree, name: str, b: int) -> None:
    """The tree as one row of lists indexed by 1-based node id: split dimension (1-based), the
    1-based id of the first child and the b - 1 thresholds (+inf padded). A leaf points at itself
    with +inf thresholds, so every level of the descent is the same expression, with no CASE."""
    size = 1 + max([n[0] for n in tree.nodes] + [n[2] + b - 1 for n in tree.nodes] + [0])
    dim = np.ones(size, np.int64)
    first = np.arange(1, size + 1, dtype=np.int64)
    thr = np.full((b - 1, size), math.inf)
    for nid, dm, fc, ts in tree.nodes:
        dim[nid], first[nid], thr[:, nid] = dm, fc + 1, ts
    cols = {"dim": pa.array([dim.tolist()], pa.list_(pa.int64())),
            "first": pa.array([first.tolist()], pa.list_(pa.int64()))}
    for j in range(b - 1):
        cols[f"t{j}"] = pa.array([thr[j].tolist()], pa.list_(pa.float64()))
    view = f"{name}_arrow"
    con.register(view, pa.table(cols))
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {ident(name)} AS SELECT * FROM {ident(view)}")
    finally:
        con.unregister(view)


def _descend_sql(rows_sql: str, tree: _Tree, nodes_table: str, b: int, d: int) -> str:
    """Each row walks its cell's tree (``__dq_cell`` is the root's id) and gets ``__dq_node``, its leaf.

    The one-row node table is cross-joined once; each level is one projection: node = first[node]
    + number of thresholds <= the row's coordinate on the node's split dimension, all looked up
    with ``list_extract`` from the coordinate list and the node lists (no join, no CASE per level;
    10M rows, 7 levels: 1.2 s against 3.0 s with a CASE over the dimensions)."""
    n = f"{_P}n1"
    cs = f"{_P}cs"
    nd = {k: f"{_P}nd_{k}" for k in ["dim", "first"] + [f"t{j}" for j in range(b - 1)]}
    sql = (f"SELECT t.*, [{comma(f'{_P}c{r}' for r in range(d))}] AS {cs}, {_P}cell::BIGINT + 1 AS {n}, "
           + comma(f"x.{k} AS {v}" for k, v in nd.items()) + f" FROM ({rows_sql}) t CROSS JOIN {ident(nodes_table)} x")
    for _ in range(tree.depth):
        bins = " + ".join(f"({cs}[{nd['dim']}[{n}]] >= {nd[f't{j}']}[{n}])::BIGINT" for j in range(b - 1))
        sql = f"SELECT * REPLACE ({nd['first']}[{n}] + {bins} AS {n}) FROM ({sql})"
    return f"SELECT * EXCLUDE ({cs}, {n}, {comma(nd.values())}), {n} - 1 AS {_P}node FROM ({sql})"


# ---------------------------------------------------------------- one LDS iteration

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


def _squash_once(con, m: _Model, spec: LdsSpec, theta0, chol, ds, df, sample_table: str, cuts: tuple[int, int],
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
    srows = _rows_sql(m, theta0, chol, pca_rows, (f"{_P}rid",))
    sp = con.execute(f"SELECT {_P}cell, {comma(lnames)} FROM ({_profile_sql(spec.family, U, srows)}) "
                     f"ORDER BY {_P}rid").fetchnumpy()
    P = np.column_stack([np.asarray(sp[k], dtype=float) for k in lnames])
    pcells = np.asarray(sp[f"{_P}cell"], dtype=np.int64)
    basis = _basis(P, pcells, p, _CENTRE_ROWS and spec.family != "binomial")
    d = basis.B.shape[1]
    exact = (P @ basis.B - basis.mu) / basis.sd  # those rows' coordinates
    offsets = U @ chol.T

    def sample_coords(rows: str, flags: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        q = _coords_sql(m, spec.family, theta0, offsets, basis, rows, [f"{_P}rid"], flags)
        got = con.execute(f"SELECT {_P}cell, {comma(f'{_P}c{r}' for r in range(d))} FROM ({q}) "
                          f"ORDER BY {_P}rid").fetchnumpy()
        return (np.column_stack([np.asarray(got[f"{_P}c{r}"], dtype=float) for r in range(d)]),
                np.asarray(got[f"{_P}cell"], dtype=np.int64))

    # second-order profiles where, on the sample's rows, they are within 1% of every coordinate's spread
    quad, rel = None, None
    if spec.profiles == "auto" and spec.family in ("binomial", "gaussian"):  # poisson: exp is cheap anyway
        lean = sample_coords(pca_rows, np.zeros(d, bool))[0]
        need = np.abs(lean - exact).max(axis=0, initial=0.0) > _TAYLOR_TOL * basis.spread
        plan = _second_order_plan(exact, lean, sample_coords(pca_rows, need)[0] if need.any() else lean, basis.spread)
        if plan is not None:
            quad, rel = plan
    # the tree, on the coordinates the rows will have in the squash pass (the exact ones of the rows
    # profiled above are already known when those are all the tree's rows)
    if quad is None and cuts[0] == cuts[1]:
        C, scells = exact, pcells
    else:
        C, scells = sample_coords(tree_rows, quad)
    counts = {int(c): int(n) for c, n in zip(*np.unique(scells, return_counts=True))}
    leaves = _allocate(m.cells, spec.size, counts)
    tree = _fit_tree(C, scells, leaves, len(m.cells), spec.branching)
    _nodes_table(con, tree, names["nodes"], spec.branching)

    def coords_sql(from_sql: str, carry: list[str]) -> str:
        return _coords_sql(m, spec.family, theta0, offsets, basis, from_sql, carry, quad)

    # the squash pass over all rows: profile -> coordinates -> tree descent -> one GROUP BY
    rows = coords_sql(_with_cell_sql(m, _keyed_sql(m), cells_table), [])
    walked = _descend_sql(rows, tree, names["nodes"], spec.branching, d)
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


# ---------------------------------------------------------------- the pipeline

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
    import warnings

    from ._glm import fit_design

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence of a deliberate one-step fit, separation in a sample
        return fit_design(con, from_sql, design, family, weight_sql, **kw)


def squash_lds_to_arrow(con: duckdb.DuckDBPyConnection, source: object, spec: LdsSpec,
                        show_progress: bool = False) -> tuple[pa.Table, LdsReport]:
    """Run LDS (and ILDS iterations) on ``source``; nothing is written. Temporary tables are dropped."""
    from ._progress import progress as progress_bar

    timings: dict[str, float] = {}
    tag = uuid.uuid4().hex[:12]
    names = {k: f"{_P}lds_{k}_{tag}" for k in ("cells", "sample", "nodes", "points", "squashed")}
    src = resolve(con, source)
    try:
        t = time.perf_counter()
        m = _model(con, src, spec)
        p = len(m.design.exprs)
        if spec.size < p:
            raise InputError(f"size={spec.size:,} is below the number of model parameters ({p}); "
                             "a squashed table needs at least one pseudo-point per parameter")
        with progress_bar(con, "cells", show_progress):
            _cells_pass(con, m, spec, names["cells"])
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
        keyed = _keyed_sql(m)
        with progress_bar(con, "sample", show_progress):
            con.execute(f"CREATE TEMP TABLE {ident(names['sample'])} AS "
                        f"{_with_cell_sql(m, f'SELECT * FROM (SELECT *, {h} AS {_P}h FROM ({keyed})){cut}', names['cells'])}")
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


def _score(con, from_sql: str, m: _Model, spec: LdsSpec, theta: np.ndarray) -> np.ndarray:
    """The weighted score X'F(y - mu) at ``theta`` over a (small) squashed table."""
    from ._families import mean_sql

    xs = [f"({e})" for e in m.design.exprs]
    eta = " + ".join(f"{literal(float(b))} * {x}" for b, x in zip(theta, xs))
    r = f"CAST({ident(spec.weight)} AS DOUBLE) * ({m.y} - {mean_sql(spec.family, eta)})"
    row = con.execute(f"SELECT {comma(f'fsum({r} * {x})' for x in xs)} FROM {from_sql}").fetchall()[0]
    return np.asarray(row, dtype=float)


def _with_change(it: LdsIteration, change: float) -> LdsIteration:
    from dataclasses import replace

    return replace(it, change_se=change)


def lds_spec(weight: str = "weight", seed: int = 0, **options) -> LdsSpec:
    """The validated :class:`LdsSpec` for ``duckquash.squash(..., method="lds", formula=..., size=...)``."""
    allowed = set(LdsSpec.__dataclass_fields__) - {"weight", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for method='lds'; it takes {sorted(allowed)}")
    if "formula" not in options or "size" not in options:
        raise InputError("method='lds' needs formula='y ~ ...' and size=M (the number of pseudo-points)")
    return LdsSpec(weight=weight, seed=seed, **options)
