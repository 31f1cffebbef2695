"""LDS / ILDS benchmarks (issue 4). Every figure is measured in one run of this script.

Run:  python benchmarks/lds.py [accuracy|selection|speed|all] [--rows N] [--speed-rows N] [--reps R]

(a) accuracy: the paper-structure simulation (``duckquash.frontends.demo.simulate``, 744,963 rows) squashed
    by LDS and ILDS(3) at M = N/1000 for the main-effects logistic model, then both the main-effects
    model and the second-order model (squares and pairwise interactions of x1..x5) fitted on the
    squashed table; MSE of z = (beta - beta_full) / SE_full, next to uniform samples of M rows.
(b) selection: a simulation with 6 candidate predictors of which 3 are active; BIC
    (-2 llf + k log N) of all 64 subsets on the full data, on the LDS table (squashed once for the
    full model) and on a uniform sample of the same size: Spearman rank correlation with the full
    data's BICs and whether the same best model is chosen, over R replications.
(c) speed: LDS on 10M rows, p = 10 (intercept + 9 predictors), against one ``duckquash.glm``
    IRLS pass over the same table; prints the ratio, for the default (second-order profiles where
    certified) and for exact profiles, with each squashed fit's MSE against the full-data fit.

``table1_extra()`` returns (label, builder) rows for ``benchmarks/paper_table1.py``'s EXTRA list.
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import duckdb
import numpy as np
import scipy.stats

import duckquash
from duckquash.frontends.demo import simulate
from duckquash import fit_design, glm
from duckquash import build_design

MAIN = "defected ~ C(a1) + C(a2) + x1 + x2 + x3 + x4 + x5"
QUANT = ["x1", "x2", "x3", "x4", "x5"]
SECOND = ("defected ~ C(a1) + C(a2) + (x1 + x2 + x3 + x4 + x5)**2 + "
          + " + ".join(f"I({x}**2)" for x in QUANT))


def table1_extra(iterations: tuple[int, ...] = (1, 3)) -> list:
    """Rows for paper_table1.EXTRA: LDS/ILDS squashed for the main-effects model at M = N/1000, with a
    uniform sample and OSMAC of that size beside them, and LDS at the HypRect(1) size (equal M)."""
    def size(con: duckdb.DuckDBPyConnection, table: str) -> int:
        return max(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] // 1000, 20)

    def lds(its: int, equal_m: bool = False):
        def build(con: duckdb.DuckDBPyConnection, table: str, m_hyprect1: int) -> str:
            name = f"lds_{its}_{'m1' if equal_m else 'k'}"
            duckquash.squash(con, table, method="lds", formula=MAIN, family="binomial",
                             size=m_hyprect1 if equal_m else size(con, table),
                             iterations=its, into=name, replace=True)
            return name
        return build

    def unif(con: duckdb.DuckDBPyConnection, table: str, m_hyprect1: int) -> str:
        return duckquash.sample(con, table, size(con, table), into="unif_k", replace=True).table

    def osmac(con: duckdb.DuckDBPyConnection, table: str, m_hyprect1: int) -> str:
        return duckquash.sample(con, table, size(con, table), method="osmac", criterion="mvc", formula=MAIN,
                                into="osmac_k", replace=True).table

    rows = [(("LDS" if k == 1 else f"ILDS({k})") + " (N/1000)", lds(k)) for k in iterations]
    return rows + [("uniform (N/1000)", unif), ("OSMAC mVc (N/1000)", osmac),
                   ("LDS (HypRect(1) M)", lds(1, equal_m=True))]


def _mse(con, table: str, formula: str, full, weight: str | None = "weight") -> float:
    r = glm(con, table, formula, "binomial", weight=weight)
    return float(np.mean(((r.params - full.params) / full.bse) ** 2))


def _uniform(con, source: str, n: int, m: int, seed: int, name: str) -> str:
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT *, {n / m!r}::DOUBLE AS weight FROM {source} "
                f"ORDER BY hash(rowid, {seed}) LIMIT {m}")
    return name


def accuracy(rows: int, reps: int) -> None:
    print(f"\n(a) accuracy: paper-structure simulation, {rows:,} rows, M = N/1000 (squashed for the main-effects model)")
    con = duckdb.connect()
    simulate(con, rows)
    m = rows // 1000
    fulls = {"main": glm(con, "calls", MAIN, "binomial"), "second": glm(con, "calls", SECOND, "binomial")}
    print(f"{'reduction':28s} {'M':>6s} {'main MSE':>10s} {'second MSE':>11s} {'seconds':>8s}")
    for its, init in ((1, "sample"), (3, "sample"), (1, "mle")):
        t0 = time.perf_counter()
        res = duckquash.squash(con, "calls", method="lds", formula=MAIN, size=m, iterations=its, init=init,
                               into="lds", replace=True)
        secs = time.perf_counter() - t0
        label = ("LDS" if its == 1 else f"ILDS({its})") + ("" if init == "sample" else f", init={init}")
        print(f"{label:28s} {res.n_points:6,d} {_mse(con, 'lds', MAIN, fulls['main']):10.3f} "
              f"{_mse(con, 'lds', SECOND, fulls['second']):11.3f} {secs:8.1f}", flush=True)
        if its == 3:
            print("   " + res.report.summary().replace("\n", "\n   "))
    mains, seconds = [], []
    for s in range(reps):
        _uniform(con, "calls", rows, m, s, "unif")
        mains.append(_mse(con, "unif", MAIN, fulls["main"]))
        seconds.append(_mse(con, "unif", SECOND, fulls["second"]))
    print(f"{f'uniform sample (mean of {reps})':28s} {m:6,d} {np.mean(mains):10.3f} {np.mean(seconds):11.3f}")


def _selection_data(con, rows: int, seed: int) -> None:
    u = lambda k: f"((hash(i * 32 + {k}, {seed}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)})"  # noqa: E731
    con.execute(f"""CREATE OR REPLACE TABLE sel AS
        WITH b AS (SELECT i, {g(1)} AS c, {g(3)} AS e1, {g(5)} AS e2, {g(7)} AS e3, {g(9)} AS e4, {g(11)} AS e5,
                          {g(13)} AS e6 FROM range({rows}) t(i)),
        x AS (SELECT i, 0.6 * c + 0.8 * e1 AS x1, 0.6 * c + 0.8 * e2 AS x2, e3 AS x3, 0.5 * c + 0.866 * e4 AS x4,
                     exp(0.5 * e5) AS x5, e6 AS x6 FROM b)
        SELECT x1, x2, x3, x4, x5, x6,
               ({u(15)} < 1 / (1 + exp(-(-0.5 + 0.06 * x1 - 0.04 * x3 + 0.03 * x4))))::INT AS y FROM x""")


def selection(rows: int, reps: int) -> None:
    names = ["x1", "x2", "x3", "x4", "x5", "x6"]
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    print(f"\n(b) variable selection: {rows:,} rows, 6 candidates (active x1, x3, x4), all {len(subsets)} subsets, "
          f"M = N/1000, {reps} replications")
    con = duckdb.connect()
    m = rows // 1000
    stats = {"LDS": [], "ILDS(3)": [], "uniform": []}
    for rep in range(reps):
        _selection_data(con, rows, rep)

        def bics(table: str, weight: str | None) -> np.ndarray:
            out = []
            for s in subsets:
                f = "y ~ " + (" + ".join(s) if s else "1")
                r = glm(con, table, f, "binomial", weight=weight)
                out.append(-2 * r.llf + len(r.params) * math.log(rows))
            return np.array(out)

        full = bics("sel", None)
        best = int(np.argmin(full))
        for label, its in (("LDS", 1), ("ILDS(3)", 3)):
            duckquash.squash(con, "sel", method="lds", formula="y ~ " + " + ".join(names), size=m, iterations=its,
                             seed=rep, into="sel_lds", replace=True)
            b = bics("sel_lds", "weight")
            stats[label].append((scipy.stats.spearmanr(full, b).statistic, int(np.argmin(b)) == best))
        _uniform(con, "sel", rows, m, rep, "sel_unif")
        b = bics("sel_unif", "weight")
        stats["uniform"].append((scipy.stats.spearmanr(full, b).statistic, int(np.argmin(b)) == best))
        print(f"  rep {rep}: full data picks {subsets[best]}; " + ", ".join(
            f"{k} rho {v[-1][0]:.3f} same best {v[-1][1]}" for k, v in stats.items()), flush=True)
    for k, v in stats.items():
        rho = np.array([a for a, _ in v])
        print(f"  {k:8s} mean rank correlation {rho.mean():.3f} (min {rho.min():.3f}); same best model in "
              f"{sum(b for _, b in v)}/{len(v)}")


def speed(rows: int, branching: int = 4) -> None:
    print(f"\n(c) speed: {rows:,} rows, p = 10 (intercept + x1..x9), binomial, M = N/1000")
    con = duckdb.connect()
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)})"  # noqa: E731
    xs = [f"x{j}" for j in range(1, 10)]
    con.execute(f"CREATE TABLE big AS SELECT {', '.join(f'{g(2 * j)} AS x{j}' for j in range(1, 10))}, "
                f"({u(30)} < 0.3)::INT AS y FROM range({rows}) t(i)")
    formula = "y ~ " + " + ".join(xs)
    design = build_design(con, "big", formula)
    # one IRLS pass: a single Newton step from a given start
    passes = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = fit_design(con, "big", design, "binomial", start=np.zeros(10), max_iter=1)
        passes.append((time.perf_counter() - t0) / max(r.n_passes, 1))
    one = min(passes)
    full = glm(con, "big", formula, "binomial")
    m = rows // 1000
    times = {}
    for profiles in ("auto", "exact"):
        t0 = time.perf_counter()
        res = duckquash.squash(con, "big", method="lds", formula=formula, size=m, into=f"big_{profiles}",
                               branching=branching, profiles=profiles)
        times[profiles] = time.perf_counter() - t0
        print("   " + res.report.summary().replace("\n", "\n   "))
        print(f"  profiles={profiles}: {times[profiles]:.2f}s = {times[profiles] / one:.1f}x one glm IRLS pass "
              f"({one:.2f}s); main-effects MSE vs the full fit {_mse(con, f'big_{profiles}', formula, full):.3f}",
              flush=True)
    between = glm(con, "big_auto", formula, "binomial", weight="weight").params - \
        glm(con, "big_exact", formula, "binomial", weight="weight").params
    _uniform(con, "big", rows, m, 0, "big_unif")
    print(f"  second-order vs exact profiles: mean z^2 between the two squashed fits {np.mean((between / full.bse) ** 2):.2e}; "
          f"uniform sample of {m:,} rows: MSE {_mse(con, 'big_unif', formula, full):.1f}")
    print(f"  LDS {times['auto']:.2f}s / one glm IRLS pass {one:.2f}s = ratio {times['auto'] / one:.1f}x (target <= 10x)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=["accuracy", "selection", "speed", "all"])
    ap.add_argument("--rows", type=int, default=744_963)
    ap.add_argument("--sel-rows", type=int, default=200_000)
    ap.add_argument("--speed-rows", type=int, default=10_000_000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    if a.what in ("accuracy", "all"):
        accuracy(a.rows, a.reps)
    if a.what in ("selection", "all"):
        selection(a.sel_rows, a.reps)
    if a.what in ("speed", "all"):
        speed(a.speed_rows)


if __name__ == "__main__":
    main()
