"""Generate: per region, weighted pseudo-points whose moments match the region's moments.

Turns the DOUBLE moment table into per-region targets (central moments in local units, bounds,
active variables), groups regions with the same (points, active variables) into batches for
the solver (``solver.py``), keeps tiny regions as their own rows and one-point regions as their
means, and assembles the output table and one diagnostics row per region.
"""
from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product

import numpy as np
import pyarrow as pa

from ..sql.names import ROWS_COL, max_col, min_col, moment_col
from .binning import Binning
from .moments import MomentTable
from .points import n_points
from .solver import EXACT_TOL, Batch, Fit, moment_plan, solve_batch
from .spec import SquashSpec

BUMPS = 3  # times a region whose second order is not exact gets one more point
_CHUNK = 128  # regions per solver batch
_THREADS = min(4, os.cpu_count() or 1)  # solver threads over chunks


def exact_row_limit(alpha: float, q: int, method: str) -> int:
    """Largest region size kept row by row when M_r reaches N_r (also after extra points are added)."""
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
    center: np.ndarray  # (R, q): each region's units, z = (x - center) / scale
    scale: np.ndarray

    @property
    def mean_x(self) -> np.ndarray:
        """Region means on the raw scale, clipped into the range (constant columns: their value)."""
        return np.clip(self.center + self.scale * self.mean_z, self.lo_x, self.hi_x)


def _regions(moments: MomentTable, binning: Binning) -> _Regions:
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
    central = central_moments(raw, n, mean_z, np.where(sd_z > 0, sd_z, 1.0)) if q else {}
    center, scale = binning.frames(tbl.select(list(moments.key_columns)))
    return _Regions(n, lo_x, hi_x, present, active, mean_z, sd_z, central, center, scale)


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
        ok = region >= 0  # rows whose region is unknown start nothing
        z = np.full(values.shape, np.nan)
        z[ok] = (values[ok] - reg.center[region[ok]]) / reg.scale[region[ok]]
        return cls(first, np.searchsorted(region, ids, side="right") - first, z)


def _fit_group(reg: _Regions, sample: _Sample, idx: np.ndarray, mr: int, act: tuple[int, ...],
               spec: SquashSpec) -> tuple[np.ndarray, np.ndarray, Fit]:
    """Solve one batch: regions ``idx`` with ``mr`` points and active variables ``act``.

    Returns raw-scale points (B, mr, q), weights (B, mr) and the fit diagnostics.
    """
    q, a, dd = reg.lo_x.shape[1], np.array(act), len(act)
    plan = moment_plan(mr, dd, spec.degree, lambda e: _scatter(q, act, e) in reg.central)
    target = np.column_stack([reg.central[_scatter(q, act, e)][idx] for e in plan.exps])
    corr = np.empty((len(idx), dd, dd))
    for i, k in product(range(dd), range(dd)):
        corr[:, i, k] = reg.central[_scatter(q, act, np.eye(dd, dtype=int)[i] + np.eye(dd, dtype=int)[k])][idx]
    mu, sd = reg.mean_z[np.ix_(idx, a)], reg.sd_z[np.ix_(idx, a)]
    lo_x, hi_x = reg.lo_x[np.ix_(idx, a)], reg.hi_x[np.ix_(idx, a)]
    center, scale = reg.center[np.ix_(idx, a)], reg.scale[np.ix_(idx, a)]
    to_u = lambda x: ((x - center) / scale - mu) / sd  # noqa: E731
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
    xa = center[:, None, :] + scale[:, None, :] * (mu[:, None, :] + sd[:, None, :] * fit.y)
    x[:, :, a] = np.clip(xa, lo_x[:, None, :], hi_x[:, None, :])
    return x, reg.n[idx][:, None] * fit.pi, fit


def generate(moments: MomentTable, binning: Binning, spec: SquashSpec, fetch_rows: int,
             sample: tuple[np.ndarray, np.ndarray]) -> Generated:
    """Turn every region's moments into weighted pseudo-points (see the module docstring).

    ``sample`` is (region index, raw values) of the binning sample; its rows seed the solver.
    A region whose mean and covariance cannot be matched exactly inside its bounds gets one
    more point and is solved again (up to ``BUMPS`` times); tiny regions end as their own rows.
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
    reg = _regions(moments, binning)
    n, d = reg.n, reg.active.sum(axis=1)
    m = n_points(n, d, spec.alpha, spec.method, spec.exact_covariance)
    kind = np.full(len(n), "fit", dtype=object)
    kind[m == 1] = "mean"
    smp = _Sample.build(*sample, reg)
    stats = {k: np.zeros(len(n)) for k in ("resid2", "resid_high", "bound_excess")}
    restarts = np.zeros(len(n), dtype=np.int64)
    solved: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # region -> (points (m, q), weights)
    for bump in range(BUMPS + 1):
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
        retry = [r for r in solved if stats["resid2"][r] > EXACT_TOL and m[r] < n[r]]
        if not retry or bump == BUMPS:  # the last round keeps its fits (else their points were lost)
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
