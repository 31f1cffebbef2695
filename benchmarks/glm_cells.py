"""Where the per-cell IRLS pass (duckquash/model/cells.py) stops paying: fit time of duckquash.glm with
``per_cell=True`` against ``per_cell=False`` as the number of cells grows, in one run.

Run:  python benchmarks/glm_cells.py [--rows 300000] [--repeat 2]

Design: logistic ``y ~ C(g1) + C(g2) + C(g3) + x1 + x2 + x3`` with three categoricals of L levels
each (L^3 possible cells, all occurring) and three normal numerics; k = 3(L-1) + 4 columns. Also
one categorical of L levels with ``C(g1):x1`` (k = 2L + 2, L cells). Prints seconds per fit
(median of the repeats, the two interleaved), the ratio direct/per-cell and the cells.
"""
from __future__ import annotations

import argparse
import time

import duckdb
import numpy as np

import duckquash


def make(con, rows: int, L: int) -> None:
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)})"  # noqa: E731
    con.execute(f"""CREATE OR REPLACE TABLE t AS
        WITH b AS (SELECT floor({u(1)} * {L})::INT AS g1, floor({u(2)} * {L})::INT AS g2,
                          floor({u(3)} * {L})::INT AS g3, {g(4)} AS x1, {g(6)} AS x2, {g(8)} AS x3,
                          {u(10)} AS r FROM range({rows}) t(i))
        SELECT *, (r < 1 / (1 + exp(-(0.3 * x1 - 0.2 * x2 + 0.1 * x3 + 0.05 * (g1 % 3) - 0.04 * (g2 % 5)))))::INT AS y
        FROM b""")


def timed(con, formula, per_cell, repeat):
    ts, res = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = duckquash.glm(con, "t", formula, "binomial", per_cell=per_cell)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--levels", default="4,8,16,24,32,40")
    args = ap.parse_args()
    con = duckdb.connect()
    print(f"rows {args.rows:,}")
    print(f"{'design':34s} {'k':>4s} {'cells':>7s} {'direct s':>9s} {'per-cell s':>11s} {'direct/per-cell':>16s} {'max rel diff':>13s}")
    for L in [int(v) for v in args.levels.split(",")]:
        make(con, args.rows, L)
        for formula, label in [("y ~ C(g1) + C(g2) + C(g3) + x1 + x2 + x3", f"3 factors x {L} levels"),
                               ("y ~ C(g1) + C(g1):x1 + x2", f"C(g1) + C(g1):x1, {L} levels")]:
            ncells = con.execute("SELECT count(DISTINCT (g1, g2, g3)) FROM t" if "g2" in formula
                                 else "SELECT count(DISTINCT g1) FROM t").fetchall()[0][0]
            tp, rp = timed(con, formula, True, args.repeat)
            td, rd = timed(con, formula, False, args.repeat)
            diff = float(np.max(np.abs(rp.params - rd.params) / np.maximum(np.abs(rd.params), 1e-300)))
            print(f"{label:34s} {rp.design.k:4d} {ncells:7d} {td:9.2f} {tp:11.2f} {td / tp:16.1f} {diff:13.1e}", flush=True)


if __name__ == "__main__":
    main()
