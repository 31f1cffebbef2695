"""Time duckquash.glm on the seed's 2.5M-row design, from a DuckDB table and straight from CSV/Parquet.

Run:  python benchmarks/glm_fit.py [--rows 2500000] [--data DIR]

Prints, measured in this run: seconds per fit, SQL passes, IRLS iterations, the time of one plain
``sum`` pass over the same columns for scale, and, for the file sources, peak RSS of a process that
only fits (``/usr/bin/time``-free: read from ``resource.getrusage`` of a child process).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import duckdb

SEED_FORMULA = "y ~ 0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment, levels=lnames)"
LOGIT_FORMULA = "yb ~ a + b + c + d + d:c + a:b + C(cat1)"
LEVELS = {"lnames": [0, 1, 2, 3, 4]}


def make_data(con: duckdb.DuckDBPyConnection, rows: int) -> None:
    """The seed's structure: 4 standard normals, a 5-level categorical, beta = arange(0, 1, 1/12)."""
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)})"  # noqa: E731
    con.execute(f"""CREATE OR REPLACE TABLE seed AS
        WITH base AS (SELECT {g(1)} AS a, {g(3)} AS b, {g(5)} AS c, {g(7)} AS d,
                             floor({u(9)} * 5)::BIGINT AS cat1, {g(11)} AS e FROM range({int(rows)}) t(i))
        SELECT a, b, c, d, cat1,
               0.0833 * b + 0.1667 * c + 0.25 * d + 0.3333 * (cat1 = 0)::INT + 0.4167 * (cat1 = 1)::INT
               + 0.5 * (cat1 = 2)::INT + 0.5833 * (cat1 = 3)::INT + 0.6667 * (cat1 = 4)::INT
               + 0.75 * d * c + 0.8333 * a * b + 0.9167 * a * c + e AS y,
               ((0.3 * a - 0.5 * b + 0.2 * c * d + e) > 0)::INT AS yb
        FROM base""")


def fit_child(source: str, formula: str, family: str) -> None:
    import resource

    import duckquash
    con = duckdb.connect()
    t0 = time.perf_counter()
    res = duckquash.glm(con, source, formula, family, levels=LEVELS)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{dt:.2f} {res.n_passes} {res.n_iter} {rss:.0f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        fit_child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_500_000)
    ap.add_argument("--data", default="/tmp/duckquash_glm_bench")
    args = ap.parse_args()
    import duckquash

    os.makedirs(args.data, exist_ok=True)
    con = duckdb.connect()
    make_data(con, args.rows)
    csv, parquet = os.path.join(args.data, "seed.csv"), os.path.join(args.data, "seed.parquet")
    con.execute(f"COPY seed TO '{csv}'")
    con.execute(f"COPY seed TO '{parquet}' (FORMAT parquet)")
    t0 = time.perf_counter()
    con.execute("SELECT sum(a * b), sum(c * d), sum(y * a), count(*) FROM seed").fetchall()
    plain = time.perf_counter() - t0
    print(f"rows {args.rows:,}; one plain sum pass over the table: {plain:.2f}s")
    print(f"{'source':10s} {'family':9s} {'seconds':>8s} {'passes':>7s} {'iters':>6s} {'peak RSS MB':>12s}")
    for family, formula in [("gaussian", SEED_FORMULA), ("binomial", LOGIT_FORMULA)]:
        t0 = time.perf_counter()
        res = duckquash.glm(con, "seed", formula, family, levels=LEVELS)
        print(f"{'table':10s} {family:9s} {time.perf_counter() - t0:8.2f} {res.n_passes:7d} {res.n_iter:6d} {'-':>12s}")
        for label, path in [("csv", csv), ("parquet", parquet)]:
            out = subprocess.run([sys.executable, __file__, "--child", path, formula, family],
                                 capture_output=True, text=True, check=True).stdout.split()
            print(f"{label:10s} {family:9s} {float(out[0]):8.2f} {int(out[1]):7d} {int(out[2]):6d} {out[3]:>12s}")


if __name__ == "__main__":
    main()
