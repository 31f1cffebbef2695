"""The embedded demo: simulate a table shaped like the paper's, squash it, compare logistic fits."""
from __future__ import annotations

import time

import duckdb
import numpy as np

from ..api import glm, squash
from ..baselines.sample import sample

CATS = ["a1", "a2", "defected"]
QUANT = ["x1", "x2", "x3", "x4", "x5"]


def simulate(con: duckdb.DuckDBPyConnection, rows: int, table: str = "calls") -> None:
    """Two 3-level categoricals, five skewed correlated variables and a logistic response."""
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)})"  # noqa: E731 - standard normal
    con.execute(f"""CREATE OR REPLACE TABLE {table} AS
        WITH base AS (SELECT i, floor({u(1)} * 3)::INT AS a1, floor({u(2)} * 3)::INT AS a2,
                             {g(3)} AS common, {g(5)} AS g1, {g(7)} AS g2, {g(9)} AS g3, {g(11)} AS g4
                      FROM range({int(rows)}) t(i)),
        xs AS (SELECT i, a1, a2, exp(0.5 * (common + g1) / sqrt(2)) AS x1, 1 + 3 * exp(0.4 * common) AS x2,
                      exp(0.5 * (common + g2) / sqrt(2)) AS x3, ((common + g3) / sqrt(2)) ^ 2 AS x4,
                      exp(0.3 * g4) AS x5 FROM base)
        SELECT a1, a2, x1, x2, x3, x4, x5,
               ({u(13)} < 1 / (1 + exp(-(-1 + 0.3 * a1 - 0.2 * a2 + 0.4 * x1 - 0.1 * x2 + 0.2 * x3
                                       - 0.3 * x4 + 0.1 * x5))))::INT AS defected
        FROM xs ORDER BY i""")


FORMULA = "defected ~ C(a1) + C(a2) + " + " + ".join(QUANT)


def run_demo(rows: int = 1_000_000, progress: bool = True) -> None:
    """Simulate ``rows`` rows, squash them at the defaults, and compare the logistic fit on the
    squashed table and on a uniform sample of the same size with the full-data fit."""
    con = duckdb.connect()
    t0 = time.perf_counter()
    simulate(con, rows)
    print(f"simulated {rows:,} rows in {time.perf_counter() - t0:.1f}s  (table calls: a1, a2, defected, x1..x5)")
    t0 = time.perf_counter()
    sq = squash(con, "calls", categorical=CATS, quantitative=QUANT, into="calls_sq", progress=progress)
    print(f"squashed in {time.perf_counter() - t0:.1f}s\n{sq.report.summary()}\n")
    m = sq.n_points
    unif = sample(con, "calls", m, seed=1, into="calls_sample")
    full = glm(con, "calls", FORMULA, "binomial")
    fits = {f"squashed ({sq.report.params['method']}, defaults)": glm(con, "calls_sq", FORMULA, "binomial", weight="weight"),
            f"uniform sample of {m:,} rows": glm(con, unif.table, FORMULA, "binomial", weight="weight")}
    print("main-effects logistic regression of defected on a1, a2, x1..x5")
    print(f"z = (beta - beta_full) / SE_full;  MSE = mean(z^2);  N/M = {rows / m:,.1f}")
    for name, fit in fits.items():
        z = (np.asarray(fit.params) - np.asarray(full.params)) / np.asarray(full.bse)
        print(f"  {name:32s} MSE {np.mean(z ** 2):10.4f}   max |z| {np.max(np.abs(z)):.3f}")
