"""Weighted subsamples as baselines for squashing: uniform, and OSMAC optimal subsampling.

Both write a table in the squash output format (the source's columns plus a DOUBLE
frequency-weight column whose values sum to N) and are deterministic for a seed: every random
choice is a hash of the seed and the row's values (the same convention as the squash binning
sample), so the result does not depend on thread count or DuckDB's ``random()``.

Uniform
    The ``n`` rows with the smallest ``hash(seed, row, copy)`` (a window numbering identical rows,
    then a top-k), each with weight ``N / n``. The copy number keeps identical rows independent:
    hashing the values alone drew all copies of a row together or none (on a census table with
    255k rows but 14k distinct ones that made a "uniform" sample's MSE 9,636 against 84).

OSMAC (Wang, Zhu & Ma 2018, JASA; REFERENCE.md section 4), logistic regression only
    1. Pilot: a case-control sample of ``pilot`` rows, half from y = 1 and half from y = 0 (the
       rows with the smallest hash in each class; all of a class if it is smaller), and its
       weighted MLE ``beta0`` via :func:`duckquash.model.irls.fit_design`.
    2. Scores ``s_i = |y_i - p_i| * ||M_X^{-1} x_i||`` (``criterion="mmse"``, A-optimal) or
       ``|y_i - p_i| * ||x_i||`` (``"mvc"``, L-optimal), with ``p_i`` the pilot's fitted mean and
       ``M_X^{-1}`` the pilot's inverse weighted information (its ``cov_params()``, up to a
       constant that cancels). ``pi_i = s_i / sum_j s_j``.
    3. ``n - pilot`` draws with replacement with probabilities ``pi_i`` by systematic PPS
       sampling: rows ordered by ``hash(seed, row, copy)``, cumulative sums ``C_i`` of ``s_i`` (one
       window pass whose last value is the normaliser), and row i drawn
       ``k_i = floor(r C_i / C_N + u) - floor(r C_{i-1} / C_N + u)`` times for one offset
       ``u`` in [0, 1) from the seed. So exactly ``r = n - pilot`` draws and ``E[k_i] = r pi_i``.
    Weights: the paper's pooled two-step estimator maximises
    ``sum over draws (1 / pi_draw) * loglik_i``, with ``pi_draw = 1 / (2 N_c)`` for a pilot row
    of class c and ``pi_i`` for a second-step draw. We use exactly those relative weights (a
    pilot row gets ``pilot * N_c / n_c``, which is ``2 N_c`` when each class gives half; a
    second-step row drawn ``k_i`` times gets ``k_i / pi_i``) and rescale them all by one constant
    so they sum to N (the rows with no NULL in the model's variables). Point estimates are the
    paper's; the rescaling makes a frequency-weighted fit report standard errors on the full
    data's scale. A row drawn in both steps appears twice. The table has at most ``n`` rows.
    mMSE minimises the trace of the raw-scale variance of beta, not the mean of
    ``z_j^2 = (error_j / SE_j)^2`` that :func:`duckquash.evaluate` reports; on skewed covariates
    (benchmarks/paper_table1.py) mVc did better than mMSE on that measure.

When OSMAC helps (issue 15's check)
    Its optimality is asymptotic around a consistent pilot estimate. The pilot is a case-control
    sample, so a categorical level with few rows appears in it a handful of times: its pilot
    coefficient is then wild (often quasi-separated), the scores ``|y - p|`` of that level's rows
    near 0 for one response value, those rows are almost never drawn, and the few drawn carry
    huge weights ``1 / pi``. That was the MSE of 70.9 against 13.4 for a uniform sample: the
    method with too small a pilot, not an error in the weights (the paper's; each row's expected
    weight is 1: ``E[k_i / pi_i] = r`` and a pilot row of class c has ``r0 N_c / n_c`` with
    probability ``n_c / N_c``, so ``r0 + r = n`` before the rescaling by about ``1 / n``).
    Measured (MSE of z, seeds 0, 1, 2; logistic main-effects model):

    * 200k rows of ``frontends.demo.simulate`` plus a third categorical a3 with 6 levels
      (shares 40/30/20/8/1.5/0.5%), n = 14,000: uniform 10.0, 16.7, 23.6; mVc with the old 200-row pilot 178, (pilot fit
      failed: a level absent), 12.8; mMSE 369, (failed), 16.2; with a 1,000-row pilot (the new
      default) mVc 18.6, 4.0, 8.4 and mMSE 9.3, 11.2, 13.5.
    * 200k rows of ``tests/conftest.paper_like`` (a1, a2, defected), n = 14,000: uniform 13.9,
      12.3, 18.0; pilot 200: mVc 6.7, 14.1, 10.4, mMSE 26.1, 19.7, 9.2; pilot 1,000: mVc 7.6, 8.2,
      4.9, mMSE 16.0, 2.8, 3.4.
    * the same at n = 2,000 (N/n = 100, the 0.5% level has ~10 rows in a uniform sample): no
      pilot size makes OSMAC reliably better (a3 data: uniform 136, 40, 89; pilot 500: mVc 73,
      71, 116, mMSE 94, 217, 71).

    So the default pilot is ``min(max(1000, 20 p), n // 4)`` rows (was ``min(max(200, 10 p),
    n // 2)``), a pilot holding an indicator column fewer than 10 times (or a pilot fit that
    separates or does not converge) warns, and OSMAC is worth it when every categorical level
    (times response value) has at least tens of pilot rows; otherwise merge rare levels or use
    a uniform sample, or squash (which keeps every cell's moments exactly).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ..api import check_output_file, default_into
from ..errors import DuckquashWarning, InputError
from ..io.source import Source, drain_pending, resolve
from ..io.transaction import registered
from ..io.write import (check_table_target, file_target, output_from_sql, refuse_replacing_source, table_name,
                        write_file, write_table)
from ..model.formula import build_design
from ..model.irls import fit_design
from ..sql.build import linear_predictor
from ..sql.names import PREFIX
from ..sql.quote import comma, ident, literal

METHODS = ("uniform", "osmac")
PILOT_MIN = 1000  # default pilot: max(PILOT_MIN, 20 p) rows, at most n / 4 (see the module docstring)
PILOT_RARE = 10  # a level the pilot holds fewer times than this draws a warning
CRITERIA = ("mmse", "mvc")


@dataclass(frozen=True)
class SampleResult:
    """A weighted subsample in ``con``: weights are frequency weights summing to ``n_rows``."""

    con: duckdb.DuckDBPyConnection = field(repr=False)
    table: str
    method: str
    n_rows: int  # N: rows the weights stand for
    n_points: int  # rows in the output table
    n_draws: int  # rows drawn (with replacement for OSMAC: n_points <= n_draws)
    seconds: float
    parts: tuple[str, ...] = field(repr=False, default=())
    n_dropped: int = 0  # OSMAC: source rows with NULL in a model variable (not represented)
    pilot: object | None = field(repr=False, default=None)  # OSMAC: the pilot GLMResults
    path: str | None = field(repr=False, default=None)  # into= a .parquet/.csv file: the file written

    @property
    def from_sql(self) -> str:
        """The sample as a SQL FROM item: the table, or ``read_parquet``/``read_csv`` of the file."""
        return output_from_sql(self.parts or (self.table,), self.path)

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        return self.con.sql(f"SELECT * FROM {self.from_sql}")

    def summary(self) -> str:
        return (f"{self.method} sample {'file ' if self.path else ''}{self.table!r}: {self.n_points:,} rows ({self.n_draws:,} draws) "
                f"for N = {self.n_rows:,} (reduction {self.n_rows / max(self.n_points, 1):,.1f}x) "
                f"in {self.seconds:.2f}s")


def _int(value: object, what: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise InputError(f"{what} must be an integer >= {lo}, got {value!r}")
    return int(value)


def keyed(src: Source, seed: int) -> str:
    """The source with ``__dq_key``: a deterministic pseudo-random UBIGINT per row, ``hash(seed, every
    column, which copy of its values the row is)``. Identical rows get different keys (the copy
    number), so they are drawn independently; which copy gets which number does not matter, since
    the copies are the same: the sample is the same whatever the scan order."""
    cols = comma(ident(c) for c in src.columns)
    return (f"(SELECT *, hash({literal(int(seed))}, {cols}, row_number() OVER (PARTITION BY {cols})) AS __dq_key "
            f"FROM {src.sql})")


def _ties(src: Source) -> str:
    """Tie-breakers after the hash key, so equal keys (identical rows) sort the same every run."""
    return comma(f"{ident(c)} NULLS FIRST" for c in src.columns)


def uniform_sql(src: Source, n: int, n_total: int, seed: int, weight: str) -> str:
    """The ``n`` rows with the smallest row key, each weighted ``N / n``."""
    return (f"SELECT * EXCLUDE (__dq_key), {literal(n_total / n)} AS {ident(weight)} FROM {keyed(src, seed)} "
            f"ORDER BY __dq_key, {_ties(src)} LIMIT {n}")


def _not_null(variables: Sequence[str]) -> str:
    return " AND ".join(f"{ident(v)} IS NOT NULL" for v in variables) or "TRUE"


def _osmac(con: duckdb.DuckDBPyConnection, src: Source, n: int, formula: str, seed: int, weight: str,
           criterion: str, pilot: int | None, levels: dict | None) -> tuple[pa.Table, int, int, object]:
    design = build_design(con, src.sql, formula, levels=levels)
    if design.response is None:
        raise InputError(f"OSMAC needs a response: the formula {formula!r} has no left-hand side")
    p = len(design.names)
    where = getattr(design, "where", None) or _not_null(design.variables)
    y = f"({design.response})::DOUBLE"
    n_all, n_ok, n1, bad = con.execute(
        f"SELECT count(*), count(*) FILTER ({where}), sum({y}) FILTER ({where}), "
        f"count(*) FILTER ({where} AND {y} NOT IN (0, 1)) FROM {src.sql}").fetchall()[0]
    if n_ok == 0:
        raise InputError(f"{src.label} has no rows without NULLs in {list(design.variables)}: nothing to sample")
    if bad:
        raise InputError(f"OSMAC is for logistic regression: the response {design.response_name!r} must be "
                         f"0 or 1, but {bad:,} rows hold other values")
    n1 = int(n1 or 0)
    n0 = n_ok - n1
    if n1 == 0 or n0 == 0:
        raise InputError(f"the response {design.response_name!r} is constant ({'1' if n0 == 0 else '0'}) "
                         f"in {src.label}: a logistic model cannot be fitted")
    if n > n_ok:
        raise InputError(f"n = {n:,} is more than the {n_ok:,} usable rows of {src.label}")
    r0 = pilot if pilot is not None else min(max(PILOT_MIN, 20 * p), max(2, n // 4))
    r0 = _int(r0, "pilot", 2)
    if r0 >= n:
        raise InputError(f"pilot = {r0:,} must be smaller than n = {n:,} (the second step draws n - pilot rows)")
    half1, half0 = min(n1, r0 // 2), min(n0, r0 - r0 // 2)
    if half1 < r0 // 2:
        half0 = min(n0, r0 - half1)
    elif half0 < r0 - r0 // 2:
        half1 = min(n1, r0 - half0)
    r0 = half1 + half0
    key = "__dq_key"
    cols = comma(ident(c) for c in src.columns)
    wt = ident(weight)
    # 1. pilot: per class, the rows with the smallest key; weight pilot * N_c / n_c (sums to pilot * N)
    pilot_w = (f"CASE WHEN {y} = 1 THEN {literal(r0 * n1 / half1)} "
               f"ELSE {literal(r0 * n0 / half0)} END")
    pilot_rows = con.sql(
        f"SELECT {cols}, {pilot_w} AS {wt} FROM {keyed(src, seed)} WHERE {where} "
        f"QUALIFY row_number() OVER (PARTITION BY {y} ORDER BY {key}, {_ties(src)}) "
        f"<= CASE WHEN {y} = 1 THEN {half1} ELSE {half0} END "
        f"ORDER BY {y} DESC, {key}, {_ties(src)}").to_arrow_table()
    try:
        with registered(con, pilot_rows, "pilot") as view, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = fit_design(con, ident(view), design, "binomial", weight_sql=wt)
            counts = con.execute(f"SELECT {comma(f'count(DISTINCT ({e})), count(*) FILTER (({e}) <> 0)' for e in design.exprs)} "
                                 f"FROM {ident(view)}").fetchall()[0]
    except InputError as e:
        raise InputError(f"the OSMAC pilot fit on {r0} case-control rows failed ({e}); "
                         "pass a larger pilot= or simplify the formula") from None
    # an indicator column (a categorical level) the pilot holds a few times: its pilot estimate is
    # wild, the scores of that level's rows with it, and the inverse-probability weights explode
    few = [f"{name} ({counts[2 * k + 1]})" for k, name in enumerate(design.names)
           if counts[2 * k] == 2 and counts[2 * k + 1] < PILOT_RARE]
    problems = [str(w.message) for w in caught if issubclass(w.category, DuckquashWarning)]
    if few or problems:
        warnings.warn(DuckquashWarning(
            f"the OSMAC pilot ({r0} case-control rows) "
            + (f"holds fewer than {PILOT_RARE} rows of {', '.join(few)}" if few else "")
            + ("; " if few and problems else "") + "; ".join(problems)
            + ": the pilot estimate, and so the sampling probabilities, are unreliable (OSMAC may then do worse "
              "than a uniform sample); pass a larger pilot=, merge rare levels, or use method='uniform'"),
            stacklevel=3)
    beta = np.asarray(fit.params, dtype=float)
    # 2. scores, 3. systematic PPS draws with replacement on the cumulative sum in key order
    xs = [f"({e})::DOUBLE" for e in design.exprs]
    eta = linear_predictor(beta, [f"__dq_x{k}" for k in range(len(beta))])
    if criterion == "mmse":
        cov = np.asarray(fit.cov_params(), dtype=float)
        cov = cov / np.max(np.abs(cov))  # only proportions matter; keep the numbers near 1
        comps = [" + ".join(f"{literal(float(cov[k, j]))} * __dq_x{j}" for j in range(p)) for k in range(p)]
    else:
        comps = [f"__dq_x{j}" for j in range(p)]
    norm = "sqrt(" + " + ".join(f"({c}) ^ 2" for c in comps) + ")"
    r = n - r0
    u = float(np.random.default_rng(seed).random())
    inner = (f"SELECT {cols}, __dq_key, {comma(f'{x} AS __dq_x{k}' for k, x in enumerate(xs))}, "
             f"{y} AS __dq_y FROM {keyed(src, seed)} WHERE {where}")
    scored = f"SELECT * EXCLUDE (__dq_y), abs(__dq_y - 1.0 / (1.0 + exp(-({eta})))) * {norm} AS __dq_s FROM ({inner})"
    order = f"__dq_key, {_ties(src)}"
    cum = (f"SELECT *, sum(__dq_s) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS __dq_c FROM ({scored})")
    tot = (f"SELECT *, lag(__dq_c, 1, 0.0) OVER (ORDER BY {order}) AS __dq_c0, "
           f"max(__dq_c) OVER () AS __dq_t FROM ({cum})")
    draws = (f"SELECT *, (floor({r} * (__dq_c / __dq_t) + {literal(u)}) "
             f"- floor({r} * (__dq_c0 / __dq_t) + {literal(u)}))::BIGINT AS __dq_k FROM ({tot})")
    second = con.sql(
        f"SELECT {cols}, __dq_k * __dq_t / __dq_s AS {wt} FROM ({draws}) WHERE __dq_k > 0 "
        f"ORDER BY {order}").to_arrow_table()
    if second.num_rows == 0:
        raise InputError("the OSMAC scores are all zero (the pilot fits every row exactly); use a uniform sample")
    # pilot weights sum to r0 * N; second-step weights k_i / pi_i (up to 1/C_N) to about r * N
    w1 = pilot_rows.column(weight).to_numpy()
    w2 = second.column(weight).to_numpy()
    scale = n_ok / (w1.sum() + w2.sum())
    out = pa.concat_tables([pilot_rows, second])
    out = out.set_column(out.schema.get_field_index(weight), weight,
                         pa.array(np.concatenate([w1, w2]) * scale, pa.float64()))
    return out, n_ok, n_all - n_ok, fit


def sample(con: duckdb.DuckDBPyConnection, source: object, n: int, method: str = "uniform",
           formula: str | None = None, family: str = "binomial", seed: int = 0,
           into: str | Sequence[str] | None = None, replace: bool = False, weight: str = "weight", *,
           criterion: str = "mmse", pilot: int | None = None, levels: dict | None = None) -> SampleResult:
    """Draw a weighted subsample of ``n`` rows of ``source`` into a table, deterministic for ``seed``.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Connection holding (or able to read) the source; the output table is created here.
    source : str, data object or DuckDBPyRelation
        Anything :func:`duckquash.squash` accepts (a pandas/polars DataFrame, a pyarrow object,
        a relation; a RecordBatchReader is read once into a TEMP table: OSMAC reads it three times).
    n : int
        Rows to draw (1 <= n <= N). OSMAC draws with replacement and merges repeats, so its table
        can have fewer rows.
    method : {"uniform", "osmac"}
        Uniform sample without replacement (weights N/n), or OSMAC two-step optimal subsampling
        for logistic regression (see the module docstring for the exact weights).
    formula : str
        OSMAC only: the logistic model, e.g. ``"y ~ x1 + x2 + C(a)"``.
    family : str
        OSMAC only: must be ``"binomial"``.
    seed : int
        Same source and seed, same table.
    into : str, tuple or path, optional
        Output table, or a ``.parquet``/``.csv`` file written atomically (as :func:`duckquash.squash`);
        default a TEMP table ``temp.sample_<hex>`` (dropped when ``con`` closes). ``replace``
        overwrites an existing one.
    weight : str
        Name of the weight column (frequency weights summing to N).
    criterion : {"mmse", "mvc"}
        OSMAC optimality criterion: A-optimal ``||M_X^{-1} x||`` or L-optimal ``||x||``.
    pilot : int, optional
        OSMAC pilot size (included in ``n``); default ``min(max(1000, 20 p), n // 4)`` for ``p``
        design columns. A pilot that holds a categorical level fewer than 10 times warns (its
        estimate, hence the sampling probabilities, are then unreliable).
    levels : dict, optional
        Names usable inside the formula, e.g. ``{"lnames": [0, 1, 2]}``.

    Returns
    -------
    SampleResult
        ``table``, ``relation``, ``n_rows`` (N), ``n_points``, ``n_draws``, ``seconds``.
    """
    t0 = time.perf_counter()
    source = drain_pending(con, source)  # a reader holding con's open result is read first
    path = file_target(into)
    if path is not None:
        check_output_file(source, path, replace)
    else:
        parts = table_name(into if into is not None else default_into("sample"))
        check_table_target(con, parts, replace)
        refuse_replacing_source(con, source, parts)
    data, m, n_total, dropped, fit = draw(con, source, n, method, formula, family, seed, weight,
                                          criterion=criterion, pilot=pilot, levels=levels)
    if path is not None:
        write_file(con, data, path, replace)
        return SampleResult(con, path, m, int(n_total), data.num_rows, int(n), time.perf_counter() - t0, (),
                            int(dropped), fit, os.path.abspath(path))
    write_table(con, data, parts, replace)
    return SampleResult(con, ".".join(parts), m, int(n_total), data.num_rows, int(n), time.perf_counter() - t0,
                        parts, int(dropped), fit)


def draw(con: duckdb.DuckDBPyConnection, source: object, n: int, method: str = "uniform",
         formula: str | None = None, family: str = "binomial", seed: int = 0, weight: str = "weight", *,
         criterion: str = "mmse", pilot: int | None = None, levels: dict | None = None) -> tuple:
    """The sample :func:`sample` writes, as (Arrow table, method, N, rows dropped, pilot fit); writes nothing."""
    m = str(method).lower()
    if m not in METHODS:
        raise InputError(f"unknown sampling method {method!r}; choose one of {list(METHODS)}")
    crit = str(criterion).lower()
    if crit not in CRITERIA:
        raise InputError(f"unknown OSMAC criterion {criterion!r}; choose one of {list(CRITERIA)}")
    n = _int(n, "n (the sample size)", 1)
    seed = _int(seed, "seed", 0)
    if not isinstance(weight, str) or not weight:
        raise InputError(f"weight must be a non-empty column name, got {weight!r}")
    if weight.startswith(PREFIX):
        raise InputError(f"the weight column name {weight!r} uses the prefix {PREFIX!r}, reserved for duckquash")
    if m == "osmac":
        if not isinstance(formula, str) or "~" not in formula:
            raise InputError("method='osmac' needs a formula with a response, e.g. formula='y ~ x1 + x2'")
        if str(family).lower() != "binomial":
            raise InputError(f"OSMAC is implemented for logistic regression only: family must be 'binomial', "
                             f"got {family!r}")
    src = resolve(con, source)
    try:
        if weight in src.columns:
            raise InputError(f"the weight column name {weight!r} is already a column of {src.label}; "
                             "pass weight= another name")
        if m == "uniform":
            n_total = con.execute(f"SELECT count(*) FROM {src.sql}").fetchall()[0][0]
            if n_total == 0:
                raise InputError(f"{src.label} is empty: there is nothing to sample")
            if n > n_total:
                raise InputError(f"n = {n:,} is more than the {n_total:,} rows of {src.label}")
            data = con.sql(uniform_sql(src, n, n_total, seed, weight)).to_arrow_table()
            dropped, fit = 0, None
        else:
            data, n_total, dropped, fit = _osmac(con, src, n, formula, seed, weight, crit, pilot, levels)
    finally:
        src.close()
    return data, m, n_total, dropped, fit
