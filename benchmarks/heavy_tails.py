"""The paper-like simulation with heavier tails: does squashing still reproduce second-order models?

Run:  python benchmarks/heavy_tails.py [--rows 744963] [--seed 0]

Data (built here, in SQL): like ``duckquash.frontends.demo.simulate`` (two three-level
categoricals, a binary response, five correlated continuous columns) but with x2 a 0..100 score
rounded to integers and massed at both bounds (about 11% at 0 and 11% at 100), x4 Student-t(4)
(heavy tails) and x5 lognormal usage with sd 1 on the log scale. Reductions: HypRect(1)
(the paper's recipe), the adaptive default, and uniform samples of the same sizes. Printed: M,
N/M, the MSE of z = (beta - beta_full) / SE_full for the main-effects logistic model and the
second-order model (squares and pairwise products of x1..x5), and seconds. Targets (issue
"Squash real tables correctly"): HypRect(1) second-order MSE <= 1 and main-effects MSE <= 0.1.
"""
from __future__ import annotations

import argparse
import time
import warnings

import duckdb

import duckquash

CATS = ["a1", "a2", "defected"]
QUANT = ["x1", "x2", "x3", "x4", "x5"]
MAIN = "defected ~ C(a1) + C(a2) + x1 + x2 + x3 + x4 + x5"
SECOND = "defected ~ C(a1) + C(a2) + (x1 + x2 + x3 + x4 + x5)**2 + " + " + ".join(f"I({x}**2)" for x in QUANT)


def simulate_heavy(con: duckdb.DuckDBPyConnection, rows: int, seed: int = 0, table: str = "calls") -> None:
    """The demo's structure with a bounded integer score, a Student-t(4) column and lognormal usage."""
    u = lambda k: f"((hash(i * 32 + {k} + {int(seed) * 1000003}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"(sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)}))"  # noqa: E731 - standard normal
    chi4 = " + ".join(f"{g(20 + 2 * k)} ^ 2" for k in range(4))
    con.execute(f"""CREATE OR REPLACE TABLE {table} AS
        WITH base AS (SELECT i, floor({u(1)} * 3)::INT AS a1, floor({u(2)} * 3)::INT AS a2,
                             {g(3)} AS common, {g(5)} AS g1, {g(7)} AS g2, {g(9)} AS g3, {g(11)} AS g4,
                             sqrt(({chi4}) / 4) AS chi FROM range({int(rows)}) t(i)),
        xs AS (SELECT i, a1, a2, exp(0.5 * (common + g1) / sqrt(2)) AS x1,
                      greatest(0, least(100, round(50 + 40 * (0.6 * common + 0.8 * g2)))) AS x2,
                      exp(0.5 * (common + g2) / sqrt(2)) AS x3, ((common + g3) / sqrt(2)) / chi AS x4,
                      exp(0.3 * common + g4) AS x5 FROM base)
        SELECT a1, a2, x1, x2, x3, x4, x5,
               ({u(13)} < 1 / (1 + exp(-(-1 + 0.3 * a1 - 0.2 * a2 + 0.4 * x1 - 0.01 * x2 + 0.2 * x3
                                       - 0.3 * x4 + 0.05 * x5))))::INT AS defected
        FROM xs ORDER BY i""")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=744_963)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    con = duckdb.connect()
    simulate_heavy(con, args.rows, args.seed)
    tables, secs = {}, {}
    for label, kw in (("HypRect(1)", {"method": "hyprect", "alpha": 1.0}), ("adaptive (default)", {})):
        t0 = time.perf_counter()
        sq = duckquash.squash(con, "calls", categorical=CATS, quantitative=QUANT, into=f"sq{len(tables)}", **kw)
        secs[label] = time.perf_counter() - t0
        tables[label] = sq.table
        print(f"{label}: {sq.verify().summary()}", flush=True)
        u = duckquash.sample(con, "calls", sq.n_points, seed=1, into=f"u{len(tables)}")
        tables[f"uniform ({sq.n_points:,})"] = u.table
        secs[f"uniform ({sq.n_points:,})"] = u.seconds
    print("| method | M | N/M | MSE main effects | MSE second order | seconds |\n|---|---:|---:|---:|---:|---:|")
    res = {}
    for key, formula in (("main", MAIN), ("second", SECOND)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = duckquash.evaluate(con, "calls", tables, formula, "binomial")
        res[key] = {r["method"]: r for r in ev.table.to_pylist()}
    for label in tables:
        a, b = res["main"][label], res["second"][label]
        print(f"| {label} | {a['M']:,} | {a['reduction']:.1f} | {a['mse']:.4g} | {b['mse']:.4g} | {secs[label]:.1f} |")
    hr_main, hr_second = res["main"]["HypRect(1)"]["mse"], res["second"]["HypRect(1)"]["mse"]
    print(f"\nHypRect(1): second-order MSE {hr_second:.3g} (target <= 1: {'met' if hr_second <= 1 else 'NOT met'}), "
          f"main effects {hr_main:.3g} (target <= 0.1: {'met' if hr_main <= 0.1 else 'NOT met'})")


if __name__ == "__main__":
    main()
