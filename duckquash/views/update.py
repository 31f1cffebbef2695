"""Closed-form refresh of regions that gained few rows: keep their points' shape, make mean and
covariance exact again with one least-displacement affine map (inside the region's range)."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..ds.moments import MomentTable
from ..ds.plan import SquashPlan
from ..sql.names import N_COL, OLD_REGION, REGION, max_col, min_col, moment_col
from ..sql.quote import ident, literal
from .storage import ViewNames


def exact_inside_batch(y: np.ndarray, pi: np.ndarray, mean: np.ndarray, cov: np.ndarray, lo: np.ndarray,
                        hi: np.ndarray, rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Points (B, M, d) with weighted mean ``mean`` and covariance ``cov`` exactly, inside [lo, hi].

    Alternates the least-displacement affine map with clipping to the box (as the generator
    does), for a batch of regions at once. Returns the points and which regions succeeded.
    """
    span = np.maximum(hi - lo, 1e-300)[:, None, :]
    lo3, hi3 = lo[:, None, :], hi[:, None, :]
    vals, vecs = np.linalg.eigh(cov)
    half = (vecs * np.sqrt(np.maximum(vals, 0.0))[:, None, :]) @ vecs.transpose(0, 2, 1)
    done = np.zeros(len(y), dtype=bool)
    bad = np.zeros(len(y), dtype=bool)
    for _ in range(rounds):
        todo = ~done & ~bad
        if not todo.any():
            break
        yt, pt = y[todo], pi[todo]
        m = np.einsum("bi,bij->bj", pt, yt)
        dev = yt - m[:, None, :]
        c = np.einsum("bi,bij,bik->bjk", pt, dev, dev)
        cv = np.linalg.eigvalsh(c)
        degenerate = cv[:, 0] <= 1e-12 * np.maximum(np.einsum("bjj->b", c), 1e-300)
        h = half[todo]
        mv, mvec = np.linalg.eigh(h @ c @ h)
        inv_mid = (mvec / np.sqrt(np.maximum(mv, 1e-300))[:, None, :]) @ mvec.transpose(0, 2, 1)
        amap = h @ inv_mid @ h
        yn = mean[todo][:, None, :] + np.einsum("bjk,bik->bij", amap, dev)
        excess = np.max(np.maximum(yn - hi3[todo], lo3[todo] - yn) / span[todo], axis=(1, 2))
        fin = (excess <= 1e-9) & ~degenerate
        idx = np.flatnonzero(todo)
        y[idx] = np.clip(yn, lo3[todo], hi3[todo])  # final for the finished, the next start for the others
        done[idx[fin]] = True
        bad[idx[degenerate]] = True
    return y, done


def update_in_place(con: duckdb.DuckDBPyConnection, names: ViewNames, plan: SquashPlan, moments: MomentTable,
                    old: pa.Table,
                     max_share: float) -> tuple[pa.Table, int]:
    """Closed-form refresh of regions that gained few rows: keep their points' shape.

    For a region whose new rows are at most ``max_share`` of its rows, the weights are scaled to
    the new count and one affine map (the least displacement) makes the points' weighted mean and
    covariance equal the region's new ones exactly, so every degree <= 2 moment stays exact;
    higher moments keep the old fit's shape. Regions where this is not possible (too few points
    for the covariance, a variable that stops being constant, a point leaving the region's range)
    are re-solved instead. Returns the updated points (with ``__dq_region``) and their count.
    """
    empty = old.slice(0, 0)
    tbl = moments.table
    if max_share <= 0 or old.num_rows == 0:
        return empty, 0
    q = len(plan.binning.quantitative)
    n = tbl.column(N_COL).to_numpy().astype(float)
    old_id = pc.fill_null(pc.cast(tbl.column(OLD_REGION), pa.float64()), float("nan")).to_numpy()
    n_old = dict(con.execute(f"SELECT {REGION}, {ident(N_COL)} FROM {names.q('__moments')} WHERE {REGION} IN "
                             f"(SELECT unnest({literal([int(v) for v in old_id[~np.isnan(old_id)]])}))").fetchall())
    reg_old = old.column(REGION).to_numpy()
    starts = np.searchsorted(reg_old, np.unique(reg_old))
    bounds = dict(zip(np.unique(reg_old).tolist(), zip(starts, list(starts[1:]) + [len(reg_old)])))
    centers, scales = plan.binning.frames(tbl.select(list(moments.key_columns)))  # each region's sum units
    xs = np.column_stack([old.column(c).to_numpy(zero_copy_only=False).astype(float)
                          for c in plan.binning.quantitative]) if q else np.empty((old.num_rows, 0))
    w_all = old.column(plan.spec.weight).to_numpy()
    col = lambda name: tbl.column(name).to_numpy(zero_copy_only=False).astype(float)  # noqa: E731
    lo = np.column_stack([col(min_col(j)) for j in range(q)]) if q else np.empty((len(n), 0))
    hi = np.column_stack([col(max_col(j)) for j in range(q)]) if q else np.empty((len(n), 0))
    s1 = {j: np.nan_to_num(col(moment_col(tuple(int(i == j) for i in range(q))))) for j in range(q)}
    s2 = {(j, k): np.nan_to_num(col(moment_col(tuple(int(i == j) + int(i == k) for i in range(q)))))
          for j in range(q) for k in range(q)}
    keep_rows, new_x, new_w = [], [], []
    cands: dict[tuple, list] = {}  # (points, active variables) -> [(rows a:b, y, pi, n, mean, cov, lo, hi)]
    for r in range(len(n)):
        if np.isnan(old_id[r]) or int(old_id[r]) not in bounds:
            continue
        prev = n_old.get(int(old_id[r]))
        if prev is None or n[r] <= plan.fetch_rows or (n[r] - prev) > max_share * n[r]:
            continue
        a, b = bounds[int(old_id[r])]
        y, w = xs[a:b].copy(), w_all[a:b]
        present = ~np.isnan(lo[r])
        if np.any(np.isnan(y[:, present])) or np.any(~np.isnan(y[:, ~present])):
            continue
        act = np.flatnonzero(present & (hi[r] > lo[r]))
        const = np.flatnonzero(present & (hi[r] <= lo[r]))
        y[:, const] = lo[r][const]
        if len(y) <= act.size:
            continue
        mz = np.array([s1[j][r] / n[r] for j in act])
        ez = np.array([[s2[(j, k)][r] / n[r] for k in act] for j in act]).reshape(act.size, act.size)
        center, scale = centers[r, act], scales[r, act]
        cov_new = (ez - np.outer(mz, mz)) * np.outer(scale, scale)
        cands.setdefault((b - a, tuple(act)), []).append(
            (a, b, y, w / w.sum(), n[r], center + scale * mz, cov_new, lo[r][act], hi[r][act]))
    keep_rows, new_x, new_w = [], [], []
    for (m, act), items in cands.items():
        act = list(act)
        pi = np.array([it[3] for it in items])
        ys = np.array([it[2] for it in items])
        ok = np.ones(len(items), dtype=bool)
        if act:
            ya, ok = exact_inside_batch(ys[:, :, act], pi, np.array([it[5] for it in items]),
                                         np.array([it[6] for it in items]), np.array([it[7] for it in items]),
                                         np.array([it[8] for it in items]))
            ys[:, :, act] = ya
        for k in np.flatnonzero(ok):
            a, b = items[k][0], items[k][1]
            keep_rows.append(np.arange(a, b))
            new_x.append(ys[k])
            new_w.append(pi[k] * items[k][4])
    if not keep_rows:
        return empty, 0
    idx = np.concatenate(keep_rows)
    out = old.take(pa.array(idx))
    x = np.concatenate(new_x)
    for j, c in enumerate(plan.binning.quantitative):
        out = out.set_column(out.column_names.index(c), c, pa.array(x[:, j], mask=np.isnan(x[:, j])))
    out = out.set_column(out.column_names.index(plan.spec.weight), plan.spec.weight, pa.array(np.concatenate(new_w)))
    # the region id of a refreshed region stays the same (old id == new id for regions that existed)
    return out, len(keep_rows)
