"""Mergeable moments: a frozen squash plan, the partial moment SQL it emits, and exact merging.

A :class:`SquashPlan` fixes everything a moment table depends on: the spec, the binning
(standardisation constants, bin edges or sphere layers) and the fixed-point range. Any number of
partial moment tables computed with :meth:`SquashPlan.moment_sql` (one query per partition, file,
machine or appended batch) then add up exactly: every power sum is a ``HUGEINT`` count of
``2**-bits`` units, counts are integers, minima/maxima are minima/maxima, and the few rows kept
for tiny regions (``min([values], k)``, the k smallest value lists) merge as the k smallest of the
union (a region of at most k rows keeps all its rows as a sorted list; larger regions keep
none, and a region small in the union was small in every partition). So the merged table is bit-identical to the table of the union, whatever the split.

Stored integer moment table columns (one row per region)::

    <categorical columns>, <binning key columns __dq_bin_j | __dq_miss, __dq_layer, __dq_pyr, __dq_pyr2>,
    __dq_n BIGINT, __dq_min_j DOUBLE, __dq_max_j DOUBLE,
    __dq_m_<e> HUGEINT (fixed point: value * 2**bits(e)) or DOUBLE (too wide for fixed point),
    __dq_rows DOUBLE[][] (only when fetch_rows > 0: a region's value lists, sorted, when it has at
                          most k = fetch_rows rows; NULL for larger regions)
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..io.source import Source
from ..sql.build import key_match, key_order
from ..sql.dialect import FROM_PLACEHOLDER, check_dialect, render
from ..sql.names import N_COL, ROWS_COL, max_col, min_col, moment_col, value_col
from ..sql.quote import comma, ident, literal
from .binning import Binning, Extent, binning_from_sample, fit_binning, float_flags
from .forest import DOUBLE_HEADROOM, EXACT_HEADROOM, Forest
from .generate import exact_row_limit
from .points import n_points
from .moments import clustered, exponents, fraction_bits, install_aux, keyed_rows_sql, moment_sql, small_rows_sql
from .spec import SquashSpec

ROWS_AT_HAND = 64
PLAN_VERSION = 2  # 2: moments in region-box units, adaptive trees, the summed monomials listed
_WIDEN = 2.0  # fixed-point range: twice the observed distance from the centre (room for drift)


@dataclass(frozen=True)
class SquashPlan:
    """What a moment table depends on: spec, binning, fixed-point range, rows kept per tiny region.

    Build one with :func:`duckquash.squash_plan` (or read a materialised view's with
    :func:`duckquash.view_plan`); ship it as JSON (:meth:`to_json`) to wherever partitions are
    momentized.
    """

    spec: SquashSpec
    binning: Binning
    extent: Extent  # the range sums are sized for (observed, widened for reusable plans)
    observed: Extent  # min/max the binning pass saw (drift is measured against it)
    fetch_rows: int
    column_types: tuple[tuple[str, str], ...]  # source type of each input column
    exps: tuple[tuple[int, ...], ...] = ()  # the monomials summed: what some region will fit (moment_exps)
    exact: bool = True  # fixed-point integer sums (partial tables add exactly); else compensated DOUBLE sums
    predicted_points: float | None = None  # points the Group stage's sample predicts (adaptive, size=)

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(self.spec.categorical) + tuple(self.binning.key_columns())

    @property
    def n_aggregates(self) -> int:
        """Aggregates per region in the moment pass (count, min/max per column, power sums)."""
        return len(self.exps) + 2 * len(self.binning.quantitative) + 1

    @property
    def keeps_rows(self) -> bool:
        """Whether tiny regions keep their rows (``ROWS_COL``) instead of being fitted."""
        return self.fetch_rows > 0 and bool(self.binning.quantitative)

    def install(self, con: duckdb.DuckDBPyConnection) -> SquashPlan:
        """Create on ``con`` the TEMP tables an adaptive plan's SQL reads; returns the plan.

        Adaptive regions are trees per categorical cell; :meth:`moment_sql` reads them from a cells
        table and a one-row table of node lists (``plan.binning.aux_tables()`` gives both as Arrow
        tables, to create wherever the SQL runs). :func:`duckquash.squash_plan` and
        :func:`duckquash.view_plan` install them on their connection; HypRect and Data Sphere
        plans need none.
        """
        install_aux(con, self.binning)
        return self

    def bits(self) -> dict[tuple[int, ...], int | None]:
        """Fraction bits of each moment's fixed-point sum (None: summed in DOUBLE)."""
        if not self.exact:
            return {e: None for e in self.exps}
        bound = self.binning.z_bound(self.extent.minimum, self.extent.maximum)
        return {e: fraction_bits(bound, e) for e in self.exps}

    @property
    def fixed_point(self) -> bool:
        return all(b is not None for b in self.bits().values())

    def moment_sql(self, from_sql: str, *, rows: bool = True, dialect: str = "duckdb",
                   part: tuple[int, int] | None = None) -> str:
        """Plain SQL computing one partial integer moment table from ``from_sql`` (a FROM item).

        ``rows=False`` drops the DuckDB-only ``min(list, k)`` aggregate; the merged table then
        fits tiny regions instead of keeping their rows. ``dialect="postgres"`` (implies
        ``rows=False``) renders the query for PostgreSQL; the sums then come back as NUMERIC,
        exactly the integers DuckDB computes (both engines round a DOUBLE to BIGINT half to even);
        HypRect plans only. ``dialect="spark"`` (implies ``rows=False``) renders it for Spark SQL,
        HypRect and adaptive plans (the adaptive plan's ``binning.aux_tables()`` registered as
        temp views under their names); the sums come back as DECIMAL(38,0), exactly DuckDB's
        integers (see :mod:`duckquash.sql.dialect`). Data Sphere keys use DuckDB list functions:
        DuckDB only. ``part=(k, K)``: only the
        regions whose key hashes to k modulo K (DuckDB; see :func:`duckquash.ds.moments.moment_parts`).
        ``from_sql`` is inserted verbatim after the rest is rendered for the dialect.
        """
        check_dialect(dialect)
        if dialect == "postgres" and self.binning.method != "hyprect":
            raise InputError("moment SQL for postgres is available for HypRect plans only")
        if dialect == "spark" and self.binning.method == "datasphere":
            raise InputError("moment SQL for spark is available for HypRect and adaptive plans (Data Sphere keys "
                             "use DuckDB list functions)")
        if dialect != "duckdb" and part is not None:
            raise InputError("part= splits the pass by DuckDB's hash(); it is for DuckDB only")
        regions = self.binning.min_regions() // (part[1] if part else 1)
        sql = moment_sql(FROM_PLACEHOLDER, self.binning, self.extent, self.spec.categorical, self.exps, part=part,
                         exact=self.exact, scalar_nodes=dialect == "spark",
                         cluster=dialect == "duckdb" and clustered(regions, self.n_aggregates))
        if rows and dialect == "duckdb" and self.keeps_rows:
            sql = self._with_rows(sql, part)
        return render(sql, dialect, from_sql)

    def region_rows_sql(self, from_sql: str, regions: str, *, dialect: str = "duckdb") -> str:
        """The rows of ``from_sql`` in the regions that the table ``regions`` lists (a table name with the
        key columns), as region keys and DOUBLE values ``__dq_v_j``, rendered for ``dialect``.

        For engines without DuckDB's ``min(list, k)``: they return the few rows of the tiny regions
        (at most ``fetch_rows`` each) and :func:`row_lists_sql` builds here the ``ROWS_COL`` lists
        that ``moment_sql(rows=True)`` gives in DuckDB.
        """
        check_dialect(dialect)
        keys = list(self.key_columns)
        v = [value_col(j) for j in range(len(self.binning.quantitative))]
        sql = (f"SELECT {comma([f's.{ident(c)}' for c in keys] + [f's.{c}' for c in v])} "
               f"FROM ({keyed_rows_sql(FROM_PLACEHOLDER, self.binning, self.spec.categorical, scalar_nodes=dialect == 'spark')}) AS s "
               f"SEMI JOIN {ident(regions)} AS t ON {key_match('s', 't', keys)}")
        return render(sql, dialect, from_sql)

    def _with_rows(self, sql: str, part: tuple[int, int] | None = None) -> str:
        """Add the rows of tiny regions: ``min([values], k)`` over regions of at most k rows, NULL elsewhere.

        A region of the union has at most k rows only if it has at most k in every partition,
        so merged lists stay exact where used.
        """
        keys = list(self.key_columns)
        small = f"SELECT {comma(ident(c) for c in keys)} FROM __dq_m WHERE {ident(N_COL)} <= {int(self.fetch_rows)}"
        lists = small_rows_sql(FROM_PLACEHOLDER, self.binning, self.spec.categorical, small, self.fetch_rows, part)
        return (f"WITH __dq_m AS ({sql}) SELECT m.*, l.{ident(ROWS_COL)} FROM __dq_m AS m "
                f"LEFT JOIN ({lists}) AS l ON {key_match('m', 'l', keys)}"
                + (f" ORDER BY {key_order(keys, 'm')}" if keys else ""))

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, "spec": self.spec.as_dict(), "binning": _binning_json(self.binning),
                           "extent": asdict(self.extent), "observed": asdict(self.observed),
                           "fetch_rows": self.fetch_rows, "column_types": [list(t) for t in self.column_types],
                           "moments": [list(e) for e in self.exps], "exact": self.exact,
                           "predicted_points": self.predicted_points})

    @classmethod
    def from_json(cls, text: str) -> SquashPlan:
        d = json.loads(text)
        if d.get("version") != PLAN_VERSION:
            raise InputError(f"unsupported squash plan version {d.get('version')!r} (this duckquash reads {PLAN_VERSION})")
        ext = lambda e: Extent(e["n_rows"], tuple(e["minimum"]), tuple(e["maximum"]))  # noqa: E731
        return cls(SquashSpec(**d["spec"]), _binning_from(d["binning"]), ext(d["extent"]), ext(d["observed"]),
                   int(d["fetch_rows"]), tuple((a, t) for a, t in d["column_types"]),
                   tuple(tuple(e) for e in d["moments"]), bool(d.get("exact", True)), d.get("predicted_points"))


def _binning_json(b: Binning) -> dict:
    out = asdict(b)
    if b.forest is not None:
        out["forest"] = {**asdict(b.forest), "cells": base64.b64encode(b.forest.cells).decode("ascii")}
    return out


def _binning_from(b: dict) -> Binning:
    f = b.get("forest")
    rows = lambda v: tuple(tuple(float(x) for x in r) for r in v)  # noqa: E731 - strict: bad values fail here
    forest = None if f is None else Forest(
        tuple(f["dim"]), tuple(f["thr"]), tuple(f["first"]), rows(f["lo"]), rows(f["hi"]), int(f["depth"]),
        base64.b64decode(f["cells"]), rows(f["center"]), rows(f["scale"]))
    nums = lambda v: tuple(None if x is None else float(x) for x in v)  # noqa: E731
    return Binning(str(b["method"]), tuple(str(c) for c in b["quantitative"]), tuple(bool(x) for x in b["float_columns"]),
                   nums(b["center"]), nums(b["scale"]), rows(b["edges"]), nums(b["layer_edges"]), bool(b["split_outer"]),
                   nums(b["box_lo"]), nums(b["box_hi"]), forest, rows(b["bin_center"]), rows(b["bin_scale"]))


def moment_exps(q: int, degree: int, most_points: int) -> tuple[tuple[int, ...], ...]:
    """The monomials to sum: every one of degree <= 2, then higher ones lowest order first, as many as
    a region with ``most_points`` points fits (the paper's order; Generate uses what is there)."""
    exps = exponents(q, degree)
    low = [e for e in exps if sum(e) <= 2]
    high = [e for e in exps if sum(e) > 2]
    return tuple(low + high[:max(0, most_points * (q + 1) - len(low))])


def _widened(binning: Binning, observed: Extent, factor: float) -> Extent:
    lo, hi = [], []
    for j in range(len(binning.quantitative)):
        a, b = observed.minimum[j], observed.maximum[j]
        if a is None:
            lo.append(None)
            hi.append(None)
            continue
        c = binning.center[j]
        r = max(abs(a - c), abs(b - c)) * factor
        lo.append(min(a, c - r))
        hi.append(max(b, c + r))
    return Extent(observed.n_rows, tuple(lo), tuple(hi))


def plan_from_source(con: duckdb.DuckDBPyConnection, src: Source, spec: SquashSpec,
                     reusable: bool = True) -> tuple[SquashPlan, pa.Table]:
    """Fit the binning on ``src`` and fix how sums are kept; returns the plan and the sample rows.

    ``reusable``: a plan that partitions, merges and refreshes reuse: exact fixed-point sums (partial
    tables add exactly) sized for room beyond the observed range. A one-shot squash needs neither:
    its sums are compensated DOUBLE sums (``fsum``), 2.5x cheaper (5M rows, 125 sums: 2.3 s against
    5.8 s CPU) and finer (1e-16 relative against 2^-52 of the region's box).
    With ``spec.size`` the plan's spec carries the alpha (and exact_covariance) that land near it.
    """
    src.check_columns(spec.columns, spec.quantitative)
    fitted = fit_binning(con, src, spec, EXACT_HEADROOM if reusable else DOUBLE_HEADROOM)
    return _plan(fitted, tuple((c, src.columns[c]) for c in spec.columns), reusable), fitted[2]


def plan_from_sample(spec: SquashSpec, column_types: dict[str, str], extent: Extent, sample_rows: pa.Table,
                     reusable: bool = True) -> SquashPlan:
    """The plan :func:`plan_from_source` fits, from the Group stage's two passes computed elsewhere
    (e.g. on Spark): the global ``extent`` (count, min, max ignoring NaN), ``sample_rows`` (the
    sample in DuckDB's hash order) and each input column's DuckDB type."""
    floats = float_flags(column_types, spec.quantitative)
    fitted = binning_from_sample(spec, floats, extent, sample_rows, EXACT_HEADROOM if reusable else DOUBLE_HEADROOM)
    return _plan(fitted, tuple((c, column_types[c]) for c in spec.columns), reusable)


def _plan(fitted: tuple, types: tuple[tuple[str, str], ...], reusable: bool) -> SquashPlan:
    binning, observed, sample, spec, predicted = fitted
    q = len(spec.quantitative)
    most = int(n_points(np.array([observed.n_rows]), np.array([q]), spec.alpha, spec.method,
                        spec.exact_covariance)[0]) + 1  # + 1: the solver's two points for one
    exps = moment_exps(q, spec.degree, most)
    extent = _widened(binning, observed, _WIDEN) if reusable else observed
    bound = binning.z_bound(extent.minimum, extent.maximum)
    if any(fraction_bits(bound, e) is None for e in exps):
        extent = observed  # widening would push some sums out of fixed point: keep the observed range
    # regions this small keep their rows at hand: as their points when they cannot shrink, and as the
    # exact answer where the solver cannot match them (flights: 11 of 1,524 regions, 14-60 rows)
    fetch_rows = max(exact_row_limit(spec.alpha, q, spec.method), ROWS_AT_HAND) if spec.alpha > 0 else 0
    return SquashPlan(spec, binning, extent, observed, fetch_rows, types, exps, reusable, predicted)


def merge_sql(plan: SquashPlan, from_items: Sequence[str], *, rows: bool = True) -> str:
    """SQL adding partial integer moment tables (FROM items) into one, region by region, exactly.

    ``rows``: every input carries the ``ROWS_COL`` lists; the merged list holds the
    ``fetch_rows`` smallest of their union, which is what one ``min(list, k)`` over all rows gives.
    """
    keys = [ident(k) for k in plan.key_columns]
    q = len(plan.binning.quantitative)
    bits = plan.bits()
    cols = keys + [ident(N_COL)] + [ident(c) for j in range(q) for c in (min_col(j), max_col(j))]
    cols += [ident(moment_col(e)) for e in plan.exps]
    union = " UNION ALL ".join(f"SELECT {comma(cols + ([ident(ROWS_COL)] if rows else []))} FROM {f}"
                               for f in from_items)
    aggs = [f"sum({ident(N_COL)})::BIGINT AS {ident(N_COL)}"]
    for j in range(q):
        aggs += [f"min({ident(min_col(j))}) AS {ident(min_col(j))}", f"max({ident(max_col(j))}) AS {ident(max_col(j))}"]
    for e in plan.exps:
        c = ident(moment_col(e))
        aggs.append(f"sum({c})::HUGEINT AS {c}" if bits[e] is not None else f"sum({c})::DOUBLE AS {c}")
    group = f"GROUP BY {comma(keys)}" if keys else ""
    merged = f"SELECT {comma(keys + aggs)} FROM ({union}) {group}"
    if not (rows and plan.keeps_rows):
        return merged
    lists = (f"SELECT {comma(keys + [f'min(__dq_r, {int(plan.fetch_rows)}) AS {ident(ROWS_COL)}'])} "
             f"FROM (SELECT {comma(keys + [f'unnest({ident(ROWS_COL)}) AS __dq_r'])} FROM ({union})) {group}")
    return (f"SELECT m.*, CASE WHEN m.{ident(N_COL)} <= {int(plan.fetch_rows)} THEN l.{ident(ROWS_COL)} END "
            f"AS {ident(ROWS_COL)} FROM ({merged}) m LEFT JOIN ({lists}) l ON {key_match('m', 'l', plan.key_columns)}")


def row_lists_sql(plan: SquashPlan, rows_item: str) -> str:
    """``ROWS_COL`` lists (the ``fetch_rows`` smallest value lists, sorted) per region of the rows in
    ``rows_item`` (a FROM item with the key columns and values ``__dq_v_j``, see
    :meth:`SquashPlan.region_rows_sql`): what ``min([values], k)`` gives inside DuckDB's moment SQL."""
    keys = [ident(k) for k in plan.key_columns]
    v = comma(value_col(j) for j in range(len(plan.binning.quantitative)))
    group = f" GROUP BY {comma(keys)}" if keys else ""
    return f"SELECT {comma(keys + [f'min([{v}], {int(plan.fetch_rows)}) AS {ident(ROWS_COL)}'])} FROM {rows_item}{group}"


def double_sql(plan: SquashPlan, from_item: str, *, rows: bool = True, extra: Sequence[str] = ()) -> str:
    """An integer moment table as the DOUBLE moment table the generator reads, sorted by region key.

    Each fixed-point sum becomes ``total::DOUBLE * 2**-bits``. ``extra`` columns are carried along.
    """
    keys = [ident(k) for k in plan.key_columns]
    q = len(plan.binning.quantitative)
    sel = keys + [ident(c) for c in extra] + [ident(N_COL)]
    sel += [ident(c) for j in range(q) for c in (min_col(j), max_col(j))]
    for e, b in plan.bits().items():
        c = ident(moment_col(e))
        sel.append(f"{c}::DOUBLE * {literal(float(2.0 ** -b))} AS {c}" if b is not None else f"{c}::DOUBLE AS {c}")
    if rows and plan.keeps_rows:
        sel.append(ident(ROWS_COL))
    order = f" ORDER BY {key_order(plan.key_columns)}" if keys else ""
    return f"SELECT {comma(sel)} FROM {from_item}{order}"


def check_moment_columns(con: duckdb.DuckDBPyConnection, plan: SquashPlan, from_item: str, label: str) -> bool:
    """Raise if ``from_item`` lacks a column the plan's moment tables have; return whether it has row lists."""
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {from_item}").fetchall()}
    q = len(plan.binning.quantitative)
    need = list(plan.key_columns) + [N_COL] + [c for j in range(q) for c in (min_col(j), max_col(j))]
    need += [moment_col(e) for e in plan.exps]
    missing = [c for c in need if c not in have]
    if missing:
        raise InputError(f"{label} is not a moment table of this plan: missing column(s) {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}")
    return ROWS_COL in have


def overflow_columns(plan: SquashPlan, lo: Sequence[float | None], hi: Sequence[float | None]) -> list[str]:
    """Quantitative columns whose values in [lo, hi] could overflow a fixed-point term of the plan.

    A term of monomial e is below ``2**(log_bound(e) + bits(e))``; BIGINT holds ``2**63``.
    """
    binning = plan.binning
    lo = [a if a is not None else b for a, b in zip(lo, plan.extent.minimum)]
    hi = [a if a is not None else b for a, b in zip(hi, plan.extent.maximum)]
    reach = binning.z_bound([min(a, b) if None not in (a, b) else None for a, b in zip(lo, plan.extent.minimum)],
                            [max(a, b) if None not in (a, b) else None for a, b in zip(hi, plan.extent.maximum)])
    bound = [math.log2(max(b * (1 + 1e-9), 1.0) + 1e-12) for b in reach]
    bad: set[str] = set()
    for e, bits in plan.bits().items():
        if bits is None:
            continue
        if sum(p * bound[j] for j, p in enumerate(e)) + bits > 62.5:
            bad.update(binning.quantitative[j] for j, p in enumerate(e) if p and bound[j] > 0)
    return sorted(bad)
