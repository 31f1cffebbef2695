"""Adaptive regions: one binary k-d tree per categorical cell, fitted on the Group stage's sample.

DuMouchel et al.'s HypRect crosses every categorical cell with the same 3^Q grid of quantile
bins, so a table with many cells or many quantitative columns gets more regions than rows
(on a real table of 326k rows, 795 cells and 8 columns: 252,598 pseudo-points). Here each cell
gets as many regions as its rows can fill: the cell's sampled rows are split, largest leaf
first, on the column whose spread within the leaf is widest relative to its spread in the
whole table, at the median, until the cell has ``round(rows / rows_per_leaf)`` leaves (at defaults
rows_per_leaf is ``binning.leaf_rows``: a 12-fold reduction per leaf) or no
leaf can be split with both halves keeping ``min_rows`` (estimated) rows.

Thresholds lie halfway between two adjacent distinct sample values, so a value repeated in
many rows (a point mass, an integer code) is never split, and a column that is constant on one
side of a split (the zeros of a mostly-zero column) drops out of that region's fit.

Every node has a box (per column [lo, hi], from the thresholds and the table's extent); the
moment pass standardises each row by its region's box, so power sums stay O(1) whatever the
column's magnitude (a single 1e200 among ordinary values cannot overflow them).

Every cell with two sampled rows or more has a root (a single leaf when it is too small to
split), whose units its rows' moments use; rows with a NULL or NaN quantitative value stop at
their cell's root (their region is their cell and missing pattern). Node 0 is a leaf covering
everything, for cells the sample did not see (or saw once).
"""
from __future__ import annotations

import functools
import hashlib
import heapq
import io
import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..sql.names import ROOT_COL

MAX_LEAVES_PER_CELL = 4096


@dataclass(frozen=True)
class Forest:
    """The trees of every cell, as flat node arrays (tuples, so plans compare and serialise)."""

    dim: tuple[int, ...]  # split column of each node (0-based); -1 for a leaf
    thr: tuple[float, ...]  # a row goes right when value >= thr; +inf for a leaf
    first: tuple[int, ...]  # left child (the right child is first + 1); a leaf points at itself
    lo: tuple[tuple[float, ...], ...]  # each node's box, per column
    hi: tuple[tuple[float, ...], ...]
    depth: int  # levels of the deepest leaf (descent steps)
    cells: bytes  # Arrow IPC stream: the categorical columns of every cell with a tree, and ROOT_COL
    center: tuple[tuple[float, ...], ...] = ()  # each node's units: z = (x - center) / scale (see units)
    scale: tuple[tuple[float, ...], ...] = ()

    @functools.cached_property
    def digest(self) -> str:
        """A hash of the trees' content (names the tables their SQL reads); computed once per forest:
        the JSON of 47,607 nodes (2M rows) took 1.15 s, and the moment pass asked for it 4 times."""
        content = json.dumps([self.dim, self.thr, self.first, self.lo, self.hi, self.center, self.scale]).encode()
        return hashlib.sha1(content + self.cells).hexdigest()[:16]

    @property
    def n_nodes(self) -> int:
        return len(self.dim)

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """The node boxes and units as (n_nodes, q) arrays, built once (47,607 nodes: 0.17 s each)."""
        out = {k: np.array(getattr(self, k), dtype=float) for k in ("lo", "hi", "center", "scale")}
        for a in out.values():
            a.setflags(write=False)  # shared by every caller
        return out

    def cell_table(self) -> pa.Table:
        return pa.ipc.open_stream(self.cells).read_all()

    def leaves(self) -> np.ndarray:
        return np.flatnonzero(np.array(self.dim) < 0)


EXACT_HEADROOM = 32.0  # reusable plans: |z| <= 32 in a region's own box, so fixed-point sums keep >= 2^-39
DOUBLE_HEADROOM = 1e50  # one-shot plans (DOUBLE sums): only overflow to rule out (z^4 <= 1e200)


def units(mean: np.ndarray, sd: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: int,
          headroom: float) -> tuple[np.ndarray, np.ndarray]:
    """A region's units for its power sums, per column: centred on its sampled rows' mean and scaled by
    their sd (so E[z z'] - mean mean' loses nothing to cancellation however narrow the region is
    against its box), the scale raised so no value of the box exceeds ``headroom`` units. Without
    two sampled rows (or with no spread among them): the box's middle and half-width."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    half = np.where(half > 0, half, 1.0)
    ok = np.isfinite(mean) & np.isfinite(sd) & (sd > 0) & (count >= 2)
    c = np.where(ok, np.clip(np.nan_to_num(mean), lo, hi), mid)
    reach = np.maximum(np.abs(lo - c), np.abs(hi - c))
    s = np.where(ok, np.maximum(np.nan_to_num(sd, nan=1.0), reach / headroom), half)
    s = np.where(s > 0, s, 1.0)
    return np.where(np.isfinite(c), c, 0.0), np.where(np.isfinite(s), s, 1.0)


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _split(x: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray, scale: np.ndarray, min_count: int,
           sd: np.ndarray | None = None):
    """Best split of sample rows ``x`` (n, q): (dim, threshold, left mask) or None.

    Columns are tried widest first (sd relative to the table's; ``sd``: the rows' sd if known);
    the threshold is halfway between the two distinct values around the median, so equal values
    stay together. One sort per column tried and binary searches around the median (the
    distinct-value counts of ``np.unique`` gave the same splits at twice the cost).
    """
    n = len(x)
    if n < 2 * min_count:
        return None
    spread = (sample_moments(x)[1] if sd is None else sd) / scale
    half = n / 2
    p = (n + 1) // 2 - 1  # the median row: its distinct value is the first whose count of rows <= it reaches n / 2
    for j in np.argsort(-spread, kind="stable"):
        if not spread[j] > 0:
            break
        v = np.sort(x[:, j])
        if not v[0] < v[-1]:  # a single distinct value
            continue
        lo_at = int(np.searchsorted(v, v[p], "left"))  # rows below the median's value
        hi_at = int(np.searchsorted(v, v[p], "right"))  # rows up to it
        best = None  # (balance, rows left, value below, value above): split below the median's value or after it
        for left, below, above in ((lo_at, lo_at - 1, lo_at), (hi_at, lo_at, hi_at)):
            if 0 < left < n and left >= min_count and n - left >= min_count:
                bal = abs(left - half)
                if best is None or bal < best[0]:
                    best = (bal, left, below, above)
        if best is None:
            continue
        u0, u1 = float(v[best[2]]), float(v[best[3]])
        t = u0 + (u1 - u0) / 2
        if not (u0 < t <= u1) or not (box_lo[j] < t <= box_hi[j]):
            continue
        return int(j), t, x[:, j] < t
    return None


@dataclass
class Growth:
    """Every cell's tree grown as far as ``max_leaves`` allows, with its splits in the greedy order:
    the tree with k leaves is the first k - 1 splits, so any leaf budget is a truncation."""

    cells: pa.Table  # cells with a tree (>= 2 complete sample rows)
    kept: np.ndarray  # their indices among all the sample's cells
    nodes: list[list[tuple]]  # per cell: (parent, dim, thr, sample rows, varying columns, sample mean, sample sd)
    splits: list[list[int]]  # per cell: the node split at each step (its children are created then)
    lo: np.ndarray  # the table's extent (the root box)
    hi: np.ndarray
    rows_per_sample_row: float

    def leaves(self, c: int, want: int) -> list[int]:
        """Node indices (within cell c) of the leaves of its tree with ``want`` leaves (or all it grew)."""
        k = max(0, min(want, len(self.splits[c]) + 1) - 1)
        split = set(self.splits[c][:k])
        made = 1 + 2 * k
        return [i for i in range(made) if i not in split]

    def cell_rows(self, c: int) -> float:
        return self.nodes[c][0][3] * self.rows_per_sample_row

    def build(self, wants: Sequence[int], headroom: float) -> Forest:
        """The forest whose cell c has ``wants[c]`` leaves (fewer where it could not be split further).

        Every node's units (see :func:`units`) come from its sampled rows; ``headroom`` bounds |z|.
        """
        q = len(self.lo)
        dim, thr, first, los, his = [-1], [math.inf], [0], [tuple(self.lo)], [tuple(self.hi)]
        means, sds, counts = [], [], []
        roots, depth = [], 0
        root_lo, root_hi = [float(v) for v in self.lo], [float(v) for v in self.hi]  # Python floats: fast to copy
        for c, want in enumerate(wants):
            k = max(0, min(want, len(self.splits[c]) + 1) - 1)
            nodes = self.nodes[c][:1 + 2 * k]
            base = len(dim)
            roots.append(base)
            level = [0] * len(nodes)
            boxes = [(root_lo, root_hi)] + [None] * (len(nodes) - 1)
            for i, (parent, j, t, *_rest) in enumerate(nodes):
                dim.append(-1), thr.append(math.inf), first.append(base + i)
                if i == 0:
                    continue
                plo, phi = boxes[parent]
                lo_b, hi_b = list(plo), list(phi)
                if i % 2:  # the left child (created first) takes values below the threshold
                    hi_b[j] = t
                else:
                    lo_b[j] = t
                boxes[i] = (lo_b, hi_b)
                level[i] = level[parent] + 1
                depth = max(depth, level[i])
                if i % 2:
                    dim[base + parent], thr[base + parent], first[base + parent] = j, t, base + i
            los += [b[0] for b in boxes]
            his += [b[1] for b in boxes]
            means += [nd[5] for nd in nodes]
            sds += [nd[6] for nd in nodes]
            counts += [nd[3] for nd in nodes]
        # every node's units in one call (units is elementwise: the same numbers as node by node,
        # which took 5.5 s for 47,607 nodes)
        lo_a, hi_a = np.array(los, dtype=float).reshape(-1, q), np.array(his, dtype=float).reshape(-1, q)
        cen, sca = units(np.array([np.full(q, np.nan)] + means, dtype=float).reshape(-1, q),
                         np.array([np.full(q, np.nan)] + sds, dtype=float).reshape(-1, q),
                         lo_a, hi_a, np.array([0] + counts)[:, None], headroom)
        table = self.cells.append_column(ROOT_COL, pa.array(roots, pa.int64()))
        assert len(lo_a) == len(dim) == len(cen) and q == len(self.hi)
        plain = lambda rows: tuple(map(tuple, np.asarray(rows, dtype=float).tolist()))  # noqa: E731 - no numpy
        # scalars: the plan's JSON, equality and the aux tables' content hash must not depend on them
        return Forest(tuple(int(d) for d in dim), tuple(float(t) for t in thr), tuple(int(i) for i in first),
                      plain(lo_a), plain(hi_a), int(depth), _ipc(table), plain(cen), plain(sca))


def grow(cells: pa.Table, cell_of_row: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
         scale: np.ndarray, rows_per_sample_row: float, min_rows: float, max_leaves: Sequence[int]) -> Growth:
    """Grow every cell's tree, largest leaf first, up to ``max_leaves[c]`` leaves.

    ``cells``: the distinct categorical combinations of the sample (one row each);
    ``cell_of_row``: the cell index of each sample row; ``x``: the sample's quantitative values
    (rows with a NaN do not shape the trees); ``lo``/``hi``: the table's extent per column;
    ``scale``: each column's spread in the table (makes spreads comparable).
    ``rows_per_sample_row``: N / sample size, so ``min_rows`` (per leaf) is in table rows.
    """
    q = x.shape[1]
    complete = ~np.isnan(x).any(axis=1) if q else np.ones(len(x), dtype=bool)
    min_count = max(1, int(math.ceil(min_rows / rows_per_sample_row)))
    order = np.argsort(cell_of_row, kind="stable")
    starts = np.searchsorted(cell_of_row[order], np.arange(cells.num_rows + 1))
    keep, all_nodes, all_splits = [], [], []
    box_lo, box_hi = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)
    child_members: list[np.ndarray] = []  # every child's sampled rows, their stats computed at the end in one batch
    for c in range(cells.num_rows):
        members_all = order[starts[c]:starts[c + 1]]
        rows = members_all[complete[members_all]]
        if q == 0 or len(members_all) < 2:  # a cell of one sampled row or none: node 0's units
            continue
        # the root's units from every sampled row of the cell (rows with NULLs stop there); splits
        # from the complete ones
        nodes = [(-1, -1, math.inf, len(members_all), _varying(x[rows]), *sample_moments(x[members_all]))]
        boxes = [(box_lo, box_hi)]
        splits: list[int] = []
        heap = [(-len(rows), 0, rows)]
        while heap and len(splits) + 1 < max_leaves[c]:
            _, node, members = heapq.heappop(heap)
            found = _split(x[members], boxes[node][0], boxes[node][1], scale, min_count)
            if found is None:
                continue
            j, t, left = found
            for side, part in ((0, members[left]), (1, members[~left])):
                blo, bhi = boxes[node]
                if side == 0:
                    bhi = bhi.copy()
                    bhi[j] = t
                else:
                    blo = blo.copy()
                    blo[j] = t
                boxes.append((blo, bhi))
                nodes.append((node, j, t, len(part), len(child_members)))
                child_members.append(part)
                heapq.heappush(heap, (-len(part), len(nodes) - 1, part))
            splits.append(node)
        keep.append(c)
        all_nodes.append(nodes)
        all_splits.append(splits)
    varying, means, sds = _node_stats(x, child_members)
    for nodes in all_nodes:
        for i in range(1, len(nodes)):
            parent, j, t, count, k = nodes[i]
            nodes[i] = (parent, j, t, count, int(varying[k]), means[k], sds[k])
    return Growth(cells.take(pa.array(keep, pa.int64())), np.array(keep, dtype=np.int64), all_nodes, all_splits,
                  box_lo, box_hi, rows_per_sample_row)


def _node_stats(x: np.ndarray, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_varying` and :func:`sample_moments` of ``x[m]`` for every ``m`` of ``members``, in one batch.

    The same numbers bit for bit: NumPy reduces a C-ordered (n, q >= 2) array over its rows one row
    after another, and so does this, for all nodes at once (row k of every node with more than k
    rows); nodes the shortcut does not cover (one row, a NaN or an overflow, q = 1, where NumPy
    sums pairwise) go through :func:`sample_moments`. 2M rows, 47,595 nodes: 6.8 s -> 0.2 s.
    """
    r, q = len(members), x.shape[1]
    if not r:
        return np.zeros(0, dtype=np.int64), np.zeros((0, q)), np.zeros((0, q))
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    flat = np.concatenate(members)
    begin = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    y = x[flat]
    varying = (np.maximum.reduceat(y, begin, axis=0) > np.minimum.reduceat(y, begin, axis=0)).sum(axis=1)
    order = np.argsort(-sizes, kind="stable")  # longest first: the nodes with more than k rows are a prefix
    back = np.argsort(order)
    ns, at = sizes[order], begin[order]
    longer = np.searchsorted(-ns, -np.arange(int(ns[0])), side="left")  # longer[k]: nodes with more than k rows

    def row_sums(v: np.ndarray) -> np.ndarray:
        total = v[at].copy()
        for k in range(1, int(ns[0])):
            m = longer[k]
            total[:m] = total[:m] + v[at[:m] + k]
        return total

    with np.errstate(over="ignore", invalid="ignore"):  # overflows are redone below, as sample_moments does
        mean = row_sums(y) / ns[:, None]
        d = y - np.repeat(mean[back], sizes, axis=0)
        sd = np.sqrt(row_sums(d * d) / ns[:, None])
    mean, sd = mean[back], sd[back]
    redo = (sizes < 2) | ~np.isfinite(sd).all(axis=1) if q >= 2 else np.ones(r, dtype=bool)
    for i in np.flatnonzero(redo):
        mean[i], sd[i] = sample_moments(x[members[i]])
    return varying, mean, sd


def sample_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of a node's sampled rows per column, ignoring NaN (NaN with fewer than two values)."""
    if len(x) >= 2:
        with np.errstate(over="ignore", invalid="ignore"):  # x.mean(axis=0), x.std(axis=0) as NumPy computes
            n = len(x)  # them (the same ufunc calls, bit for bit), without their wrappers' 40 us a call
            total = np.add.reduce(x, axis=0, keepdims=True)
            mean = (total / n)[0]
            d = x - total / n
            sd = np.sqrt(np.add.reduce(d * d, axis=0) / n)
        if np.isfinite(sd).all():  # the common case: no NaN, no overflow
            return mean, sd
    ok = ~np.isnan(x)
    count = ok.sum(axis=0)
    if not len(x) or not count.max(initial=0) >= 2:
        return np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
    big = np.maximum(np.nanmax(np.abs(np.where(ok, x, 0.0)), axis=0), 1e-300)  # no overflow up to the DOUBLE range
    u = np.where(ok, x / big, 0.0)
    n = np.maximum(count, 1)
    mean = u.sum(axis=0) / n
    var = (np.where(ok, u - mean, 0.0) ** 2).sum(axis=0) / n
    few = count < 2
    return np.where(few, np.nan, mean * big), np.where(few, np.nan, np.sqrt(var) * big)


def _varying(x: np.ndarray) -> int:
    """Columns that take more than one value among rows ``x``."""
    return int(np.sum(x.max(axis=0) > x.min(axis=0))) if len(x) else 0
