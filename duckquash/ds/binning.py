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

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..io.source import Source
from ..sql.build import case_bins
from ..sql.names import LAYER, MISS, PYR, PYR2, bin_col
from ..sql.quote import comma, ident, literal
from .spec import SquashSpec

FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")


@dataclass(frozen=True)
class Binning:
    """Everything needed to put a row in its region again later (stored by materialised views)."""

    method: str
    quantitative: tuple[str, ...]
    float_columns: tuple[bool, ...]  # which inputs can hold NaN
    center: tuple[float, ...]  # standardisation: z = (x - center) / scale
    scale: tuple[float, ...]
    edges: tuple[tuple[float, ...], ...]  # HypRect: interior edges per variable, raw scale
    layer_edges: tuple[float, ...]  # Data Spheres: interior radius edges, standardised scale
    split_outer: bool  # Data Spheres: split the outermost layer by the second-largest coordinate

    def value_sql(self, j: int) -> str:
        """The j-th quantitative column as DOUBLE, NaN mapped to NULL."""
        col = f"{ident(self.quantitative[j])}::DOUBLE"
        return f"nullif({col}, 'NaN'::DOUBLE)" if self.float_columns[j] else col

    def z_sql(self, j: int, value: str) -> str:
        return f"(({value} - {literal(self.center[j])}) / {literal(self.scale[j])})"

    def key_columns(self) -> list[str]:
        """Names of the region-key columns this binning adds (besides the categoricals)."""
        q = len(self.quantitative)
        if self.method == "hyprect":
            return [bin_col(j) for j in range(q)]
        return [MISS, LAYER, PYR, PYR2] if q else []

    def key_sql(self, v: list[str], z: list[str]) -> list[str]:
        """Key expressions over raw values ``v`` and standardised ``z`` (SQL names), aligned with key_columns()."""
        q = len(self.quantitative)
        if self.method == "hyprect":
            return [case_bins(v[j], self.edges[j]) for j in range(q)]
        if not q:
            return []
        miss = " + ".join(f"(CASE WHEN {z[j]} IS NULL THEN {1 << j} ELSE 0 END)" for j in range(q))
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
        return [f"({miss})::INTEGER", layer, pyr_expr, pyr2_expr]


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


def fit_binning(con: duckdb.DuckDBPyConnection, src: Source,
                spec: SquashSpec) -> tuple[Binning, Extent, pa.Table]:
    """Run the two cheap passes; return the binning, the global extent and the sample rows."""
    q = spec.quantitative
    floats = [src.columns[c].upper().split("(")[0] in FLOAT_TYPES for c in q]
    extent = _extent(con, src, spec, floats)
    if extent.n_rows == 0:
        raise InputError(f"{src.label} is empty: there is nothing to squash")
    sample_rows = draw_sample(con, src, spec, extent.n_rows) if q else pa.table({})
    sample = float_matrix(sample_rows, q)
    center, scale, edges = [], [], []
    for j in range(len(q)):
        col = sample[:, j]
        col = col[~np.isnan(col)]
        lo, hi = extent.minimum[j], extent.maximum[j]
        if col.size == 0:  # only NULLs in the sample: fall back on the global range
            c = 0.0 if lo is None else (lo + hi) / 2
            s = 1.0 if lo is None or hi == lo else (hi - lo) / 2
        else:
            c, s = float(col.mean()), float(col.std())
            if not s > 0:
                s = 1.0 if lo is None or hi == lo else (hi - lo) / 2
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
    if spec.method == "datasphere" and q and spec.layers > 1:
        z = (sample - np.array(center)) / np.array(scale)
        r = np.sqrt(np.nansum(z * z, axis=1))
        qs = np.unique(np.quantile(r, np.arange(1, spec.layers) / spec.layers))
        layer_edges = tuple(float(v) for v in qs[qs > r.min()])
    binning = Binning(spec.method, q, tuple(floats), tuple(center), tuple(scale), tuple(edges), layer_edges, True)
    return binning, extent, sample_rows


def float_matrix(tbl: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """Columns of an Arrow table as one float matrix, NULL and NaN as NaN."""
    if not columns:
        return np.empty((tbl.num_rows, 0))
    return np.column_stack([pc.cast(tbl.column(c), pa.float64()).to_numpy(zero_copy_only=False) for c in columns])
