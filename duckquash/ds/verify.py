"""An independent check of a squashed table against its source: counts, means and covariances.

Independent of the moment pass and the solver: one fresh SQL pass over the source computes, per
region (and per categorical cell), the row count and DuckDB's own numerically stable mean
(``favg``), variances and covariances (``var_pop``, ``covar_pop``) in the region's units; one
query over the output computes the weighted count, mean and covariance of the points (centred
on their weighted mean). Output points are put in regions by the same key SQL as the rows
(a point inside its region's range stays in its box), so Data Spheres, whose keys are radii,
are checked per cell only.

What is checked, in every region: weights strictly positive and finite, weighted count = N_r,
means exact (error in units of the region's sd), covariances exact where the region has at
least d_r + 1 points (d_r: columns that vary in it; elsewhere variances), points inside the
region's [min, max], no NaN where the rows have values. Errors are measured beyond a rounding
floor of 8 ulp of the column's magnitude (only nearly constant columns notice it; see _compare).
"""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from ..io.source import Source
from ..io.transaction import registered
from ..sql.build import key_match
from ..sql.names import value_col, z_col
from ..sql.quote import comma, ident, literal
from .moments import attached, keyed_rows_sql
from .plan import SquashPlan

TOLERANCE = 1e-9  # means and covariances: largest error accepted, in region-sd units


@dataclass(frozen=True)
class Verification:
    """Worst errors per region (``regions``) and per categorical cell (``cells``); ``ok`` when
    every region meets the guarantees within :data:`TOLERANCE`."""

    regions: pa.Table | None  # keys, n_rows, weight, n_points, n_vars, mean_err, cov_err, cov_checked, ...
    cells: pa.Table

    def _worst(self, table: pa.Table | None, col: str) -> float:
        if table is None or table.num_rows == 0:
            return 0.0
        v = table.column(col).to_numpy(zero_copy_only=False).astype(float)
        return float(np.nanmax(v, initial=0.0))

    @property
    def worst_mean_error(self) -> float:
        return max(self._worst(self.regions, "mean_err"), self._worst(self.cells, "mean_err"))

    @property
    def worst_cov_error(self) -> float:
        """Over regions with enough points to hold their covariance (and over cells)."""
        return max(self._worst(self.regions, "cov_err"), self._worst(self.cells, "cov_err"))

    @property
    def worst_count_error(self) -> float:
        return max(self._worst(self.regions, "count_err"), self._worst(self.cells, "count_err"))

    @property
    def n_bad_weights(self) -> int:
        return int(self._worst(self.cells, "bad_weights_total"))

    @property
    def n_outside(self) -> int:
        return int(self._worst(self.regions, "outside_total"))

    @property
    def ok(self) -> bool:
        return (self.worst_mean_error <= TOLERANCE and self.worst_cov_error <= TOLERANCE
                and self.worst_count_error <= 1e-9 and self.n_bad_weights == 0 and self.n_outside == 0)

    def __repr__(self) -> str:
        return f"<Verification: {self.summary()}>"

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        scope = f"{self.regions.num_rows:,} regions and " if self.regions is not None else ""
        return (f"verified against the source ({scope}{self.cells.num_rows:,} cells): "
                f"{'OK' if self.ok else 'FAILED'}; worst count error {self.worst_count_error:.1e} (relative), "
                f"mean {self.worst_mean_error:.1e} sd, covariance {self.worst_cov_error:.1e} sd^2, "
                f"{self.n_bad_weights} weights <= 0 or not finite, {self.n_outside} values outside their region")


def _stats_sql(keyed: str, keys: list[str], q: int, weight: str | None) -> str:
    """Per group: count (or weight sum), mean, min, max, and (weighted) covariances of z_col(j)."""
    z = [z_col(j) for j in range(q)]
    g = comma(ident(k) for k in keys)
    if weight is None:
        aggs = ["count(*)::DOUBLE AS __dq_w"]
        aggs += [f"favg({z[j]}) AS __dq_mu{j}" for j in range(q)]
        aggs += [f"covar_pop({z[j]}, {z[k]}) AS __dq_c{j}_{k}" for j in range(q) for k in range(j, q)]
        aggs += [f"min({z[j]}) AS __dq_lo{j}" for j in range(q)] + [f"max({z[j]}) AS __dq_hi{j}" for j in range(q)]
        return f"SELECT {comma([g] if keys else [])}{', ' if keys else ''}{comma(aggs)} FROM ({keyed})" + (
            f" GROUP BY {g}" if keys else "")
    w = ident(weight)
    means = comma(["sum(" + w + ")::DOUBLE AS __dq_w", "count(*)::DOUBLE AS __dq_m",
                   f"count(*) FILTER (WHERE NOT ({w} > 0 AND isfinite({w})))::DOUBLE AS __dq_badw"]
                  + [f"fsum({w} * {z[j]}) / sum({w}) FILTER (WHERE {z[j]} IS NOT NULL) AS __dq_mu{j}" for j in range(q)]
                  + [f"min({z[j]}) AS __dq_lo{j}" for j in range(q)] + [f"max({z[j]}) AS __dq_hi{j}" for j in range(q)])
    first = f"SELECT {g}{', ' if keys else ''}{means} FROM ({keyed})" + (f" GROUP BY {g}" if keys else "")
    covs = []
    for j in range(q):  # pairwise complete, as covar_pop: centred sums, corrected for the pair's own means
        for k in range(j, q):
            both = f"k.{z[j]} IS NOT NULL AND k.{z[k]} IS NOT NULL"
            dj, dk = f"(k.{z[j]} - m.__dq_mu{j})", f"(k.{z[k]} - m.__dq_mu{k})"
            wp = f"sum(k.{w}) FILTER (WHERE {both})"
            covs.append(f"fsum(k.{w} * {dj} * {dk}) FILTER (WHERE {both}) / {wp} - "
                        f"(fsum(k.{w} * {dj}) FILTER (WHERE {both}) / {wp}) * "
                        f"(fsum(k.{w} * {dk}) FILTER (WHERE {both}) / {wp}) AS __dq_c{j}_{k}")
    on = key_match("k", "m", keys) if keys else "TRUE"
    kg = comma(f"k.{ident(c)}" for c in keys)
    cols = ["__dq_w", "__dq_m", "__dq_badw"] + [f"__dq_mu{j}" for j in range(q)] + \
           [f"__dq_lo{j}" for j in range(q)] + [f"__dq_hi{j}" for j in range(q)]
    sel = comma(([kg] if keys else []) + [f"max(m.{c}) AS {c}" for c in cols] + covs)
    return (f"SELECT {sel} FROM ({keyed}) k JOIN ({first}) m ON {on}" + (f" GROUP BY {kg}" if keys else ""))


def _compare(src: pa.Table, out: pa.Table, keys: list[str], q: int, con: duckdb.DuckDBPyConnection,
             region_level: bool, frames, covariance_held=None) -> pa.Table:
    """Join source and output statistics on the keys; one row of errors per group.

    ``frames(keys table) -> (center, scale)``: the units z of each group's columns, to size the
    rounding floor: a raw DOUBLE holds a value only to its last bit, so a column that is nearly
    constant (sd below ~1e-7 of its magnitude) cannot have its mean placed to 1e-9 sd; errors are
    accepted up to TOLERANCE plus 8 ulp of the column's largest magnitude, in sd units.
    ``covariance_held(keys table) -> bool array``: which groups should hold their covariances
    (a cell whose regions hold only variances cannot); default: those with d + 1 points or more.
    """
    src = src.rename_columns([c if c in keys else f"s_{c}" for c in src.column_names])
    out = out.rename_columns([c if c in keys else f"o_{c}" for c in out.column_names])
    with registered(con, src, "vsrc") as a, registered(con, out, "vout") as b:
        on = key_match("s", "o", keys) if keys else "TRUE"
        kcols = comma(f"coalesce(s.{ident(k)}, o.{ident(k)}) AS {ident(k)}" for k in keys)
        ex = comma(ident(k) for k in keys)
        sql = (f"SELECT {kcols}, s.* EXCLUDE ({ex}), o.* EXCLUDE ({ex}) "
               f"FROM {ident(a)} s FULL OUTER JOIN {ident(b)} o ON {on}") if keys else \
            f"SELECT * FROM {ident(a)} s, {ident(b)} o"
        joined = con.sql(sql).to_arrow_table()
    col = lambda name: (joined.column(name).to_numpy(zero_copy_only=False).astype(float)  # noqa: E731
                        if name in joined.column_names else np.full(joined.num_rows, np.nan))
    n_src = np.nan_to_num(col("s___dq_w"))
    n_out = np.nan_to_num(col("o___dq_w"))
    count_err = np.abs(n_out - n_src) / np.maximum(n_src, 1.0)
    sd = np.column_stack([np.sqrt(np.maximum(col(f"s___dq_c{j}_{j}"), 0.0)) for j in range(q)]) if q else \
        np.zeros((joined.num_rows, 0))
    mu_s = np.column_stack([col(f"s___dq_mu{j}") for j in range(q)]) if q else sd
    mu_o = np.column_stack([col(f"o___dq_mu{j}") for j in range(q)]) if q else sd
    varies = sd > 1e-12 * np.maximum(1.0, np.abs(mu_s))
    unit = np.where(varies, sd, np.maximum(1.0, np.abs(mu_s)))  # constant columns: relative to their value
    center, scale = frames(joined.select(keys)) if q else (sd, sd)
    reach = np.column_stack([np.maximum(np.abs(center[:, j] + scale[:, j] * np.nan_to_num(col(f"s___dq_lo{j}"))),
                                        np.abs(center[:, j] + scale[:, j] * np.nan_to_num(col(f"s___dq_hi{j}"))))
                             for j in range(q)]) if q else sd
    floor = 8 * np.finfo(float).eps * reach / scale / unit  # in units of the group's sd
    with np.errstate(invalid="ignore"):
        mean_err = np.maximum(np.abs(mu_o - mu_s) / unit - floor, 0.0)
    present = ~np.isnan(mu_s)
    lost = present & np.isnan(mu_o)  # the rows have values, the points none
    mean_err = np.where(lost, np.inf, np.where(present, mean_err, 0.0))
    d = varies.sum(axis=1)
    points = np.nan_to_num(col("o___dq_m"))
    cov_err = np.zeros(joined.num_rows)
    var_only = points < d + 1
    if covariance_held is not None:
        var_only |= ~covariance_held(joined.select(keys))
    for j in range(q):
        for k in range(j, q):
            cs, co = col(f"s___dq_c{j}_{k}"), col(f"o___dq_c{j}_{k}")
            with np.errstate(invalid="ignore", divide="ignore"):
                e = np.maximum(np.abs(co - cs) / (unit[:, j] * unit[:, k]) - 2 * (floor[:, j] + floor[:, k]), 0.0)
            e = np.where(present[:, j] & present[:, k], np.nan_to_num(e, nan=np.inf), 0.0)
            if j != k:
                e = np.where(var_only, 0.0, e)  # too few points to hold the covariance: variances only
            cov_err = np.maximum(cov_err, e)
    outside = np.zeros(joined.num_rows)
    if region_level:
        for j in range(q):
            lo_s, hi_s = col(f"s___dq_lo{j}"), col(f"s___dq_hi{j}")
            lo_o, hi_o = col(f"o___dq_lo{j}"), col(f"o___dq_hi{j}")
            slack = 1e-12 * np.maximum(1.0, np.maximum(np.abs(lo_s), np.abs(hi_s)))
            bad = (lo_o < lo_s - slack) | (hi_o > hi_s + slack)
            outside += np.nan_to_num(bad.astype(float))
    cols = {k: joined.column(k) for k in keys}
    cols.update({"n_rows": pa.array(n_src), "weight": pa.array(n_out), "n_points": pa.array(points.astype(np.int64)),
                 "n_vars": pa.array(d.astype(np.int64)), "count_err": pa.array(count_err),
                 "mean_err": pa.array(mean_err.max(axis=1, initial=0.0)), "cov_err": pa.array(cov_err),
                 "cov_checked": pa.array(~var_only), "outside": pa.array(outside.astype(np.int64)),
                 "outside_total": pa.array(np.full(joined.num_rows, outside.sum())),
                 "bad_weights_total": pa.array(np.full(joined.num_rows, np.nan_to_num(col("o___dq_badw")).sum()))})
    return pa.table(cols)


def verify(con: duckdb.DuckDBPyConnection, plan: SquashPlan, source: Source, output_sql: str,
           weight: str) -> Verification:
    """Check the squashed rows (FROM item ``output_sql``) against ``source`` region by region and cell by cell."""
    b, cats, q = plan.binning, tuple(plan.spec.categorical), len(plan.binning.quantitative)
    keys = list(plan.key_columns)
    regions = None
    with attached(con, b):
        if b.method in ("hyprect", "adaptive"):
            src_keyed = keyed_rows_sql(source.sql, b, cats)
            out_keyed = keyed_rows_sql(output_sql, b, cats, (weight,))
            s = con.sql(_stats_sql(src_keyed, keys, q, None)).to_arrow_table()
            o = con.sql(_stats_sql(out_keyed, keys, q, weight)).to_arrow_table()
            regions = _compare(s, o, keys, q, con, True, b.frames)
        # cells: globally standardised units, the same for rows and points
        glob = _global_keyed(source.sql, b, cats, ())
        s = con.sql(_stats_sql(glob, list(cats), q, None)).to_arrow_table()
        o = con.sql(_stats_sql(_global_keyed(output_sql, b, cats, (weight,)), list(cats), q, weight)).to_arrow_table()
        held = None
        if regions is not None:  # a cell holds its covariances when every region of it does
            short = {tuple(r) for r, ok in zip(zip(*[regions.column(c).to_pylist() for c in cats]) if cats else
                                                [()] * regions.num_rows, regions.column("cov_checked").to_pylist())
                     if not ok}
            held = lambda t: np.array([tuple(r) not in short for r in (zip(*[t.column(c).to_pylist() for c in cats])  # noqa: E731
                                                                          if cats else [()] * t.num_rows)])
        cells = _compare(s, o, list(cats), q, con, False, lambda t: (np.tile(np.array(b.center), (t.num_rows, 1)),
                                                                     np.tile(np.array(b.scale), (t.num_rows, 1))),
                         held)
    return Verification(regions, cells)


def _global_keyed(from_sql: str, b, cats: tuple[str, ...], carry: tuple[str, ...]) -> str:
    q = len(b.quantitative)
    vals = [f"{b.value_sql(j)} AS {value_col(j)}" for j in range(q)]
    zs = [f"(({value_col(j)} - {literal(b.center[j])}) / {literal(b.scale[j])}) AS {z_col(j)}" for j in range(q)]
    inner = f"SELECT {comma([ident(c) for c in cats + carry] + vals)} FROM {from_sql}"
    return f"SELECT *, {comma(zs) if zs else '0 AS __dq_none'} FROM ({inner})"
