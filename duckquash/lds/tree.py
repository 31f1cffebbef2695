"""The profile tree: a b-ary k-d tree per cell fitted on the sample's coordinates, stored as one row
of node lists, and its descent in SQL (one ``list_extract`` projection per level)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from ..io.transaction import registered
from ..sql.quote import comma, ident
from ..sql.names import PREFIX as _P


@dataclass(frozen=True)
class Tree:
    """A k-d tree over profile coordinates, one root per cell.

    ``nodes``: internal nodes (id, dim (1-based), first child id, thresholds padded with +inf);
    ``leaf_of``: the leaf (node id) of each row the tree was fitted to."""

    nodes: list
    depth: int
    leaves: int
    leaf_of: np.ndarray | None = None


def allocate(cells: list[tuple[int, int]], size: int, sample_counts: dict[int, int]) -> dict[int, int]:
    """Leaves per cell: proportional to its rows (largest remainder), at least 1, at most its rows."""
    n = sum(c for _, c in cells)
    raw = {cid: size * c / n for cid, c in cells}
    out = {cid: max(1, int(math.floor(v))) for cid, v in raw.items()}
    rest = size - sum(out.values())
    for cid in sorted(raw, key=lambda k: (-(raw[k] - math.floor(raw[k])), k))[:max(rest, 0)]:
        out[cid] += 1
    cap = dict(cells)
    return {cid: max(1, min(v, cap[cid], sample_counts.get(cid, 0))) for cid, v in out.items()}


def fit_tree(coords: np.ndarray, cells: np.ndarray, leaves: dict[int, int], n_cells: int, b: int) -> Tree:
    nodes: list = []
    next_id = [n_cells]
    depth = [0]
    total = [0]

    leaf_of = np.full(coords.shape[0], -1, dtype=np.int64)

    def build(node: int, rows: np.ndarray, want: int, level: int) -> None:
        if want <= 1 or rows.size < 2:
            leaf_of[rows] = node
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
    return Tree(nodes, depth[0], total[0], leaf_of)


def nodes_table(con: duckdb.DuckDBPyConnection, tree: Tree, name: str, b: int) -> None:
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
    with registered(con, pa.table(cols), "nodes") as view:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {ident(name)} AS SELECT * FROM {ident(view)}")


def descend_sql(rows_sql: str, tree: Tree, nodes_table: str, b: int, d: int) -> str:
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
