"""DuMouchel et al. (1999) Table 1 layout on a simulation with the paper's structure.

Run:  python benchmarks/paper_table1.py [OUT_DIR] [--rows 744963] [--seed 0]

Data: ``duckquash.frontends.demo.simulate`` (744,963 rows like the paper's: two three-level categoricals
a1, a2; five skewed, correlated continuous x1..x5; binary response ``defected``). Rows of the
table: Means (HypRect regions, alpha = 0), DSphere(1), DSphere(2), HypRect(0.5), HypRect(1), a 1%
uniform sample, and OSMAC (mMSE and mVc, drawn for the main-effects model) and a uniform sample
at the HypRect(1) size. Every
squash uses categorical = a1, a2, defected and quantitative = x1..x5. Columns: M, reduction factor
N/M, MSE of z = (beta - beta_full) / SE_full for the main-effects logistic model and the
second-order model (squares and pairwise interactions of x1..x5, plus the categoricals; the
OSMAC samples were drawn for the main-effects model and are reused as is), and the time to build
the reduced table. Writes ``table1.md``, ``figure1_main.png`` and ``figure1_second.png`` to
OUT_DIR (default ``benchmarks/out/``).

Further rows: ``(label, builder)`` pairs in :data:`EXTRA` (``builder(con, table, n_hyprect1)``
returns the name of a reduced table with a ``weight`` column); ``benchmarks/lds.py`` adds LDS and
ILDS at M = N/1000 (with uniform and OSMAC samples of that size) and LDS at the HypRect(1) size.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import duckdb

import duckquash
from duckquash.frontends.demo import simulate

CATS = ["a1", "a2", "defected"]
QUANT = ["x1", "x2", "x3", "x4", "x5"]
MAIN = "defected ~ C(a1) + C(a2) + x1 + x2 + x3 + x4 + x5"
SECOND = ("defected ~ C(a1) + C(a2) + (x1 + x2 + x3 + x4 + x5)**2 + "
          + " + ".join(f"I({x}**2)" for x in QUANT))

# (label, builder): builder(con, source_table, m_hyprect1) -> reduced table name. For LDS rows.
EXTRA: list[tuple[str, Callable[[duckdb.DuckDBPyConnection, str, int], str]]] = []
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lds import table1_extra  # noqa: E402 - benchmark scripts sit side by side

EXTRA.extend(table1_extra())


def build(con: duckdb.DuckDBPyConnection, rows: int, seed: int) -> tuple[dict[str, str], dict[str, float]]:
    """Every reduced table of Table 1; returns label -> table name and label -> seconds."""
    tables, secs = {}, {}

    def timed(label: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        tables[label] = fn()
        secs[label] = time.perf_counter() - t0
        print(f"  {label:16s} {secs[label]:7.2f}s", flush=True)

    def sq(name: str, method: str, alpha: float) -> Callable[[], str]:
        return lambda: duckquash.squash(con, "calls", categorical=CATS, quantitative=QUANT, method=method,
                                        alpha=alpha, into=name, seed=seed).table

    timed("Means (alpha=0)", sq("means", "hyprect", 0.0))
    timed("DSphere(1)", sq("dsphere1", "datasphere", 1.0))
    timed("DSphere(2)", sq("dsphere2", "datasphere", 2.0))
    timed("HypRect(0.5)", sq("hyprect05", "hyprect", 0.5))
    timed("HypRect(1)", sq("hyprect1", "hyprect", 1.0))
    m1 = con.execute("SELECT count(*) FROM hyprect1").fetchall()[0][0]
    timed("1% sample", lambda: duckquash.sample(con, "calls", round(rows / 100), seed=seed, into="unif1").table)
    timed("OSMAC mMSE", lambda: duckquash.sample(con, "calls", m1, method="osmac", formula=MAIN,
                                                 seed=seed, into="osmac").table)
    timed("OSMAC mVc", lambda: duckquash.sample(con, "calls", m1, method="osmac", formula=MAIN, criterion="mvc",
                                                seed=seed, into="osmac_mvc").table)
    timed(f"uniform ({m1:,})", lambda: duckquash.sample(con, "calls", m1, seed=seed, into="unif_m1").table)
    for label, builder in EXTRA:
        timed(label, lambda: builder(con, "calls", m1))
    return tables, secs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(__file__), "out"))
    ap.add_argument("--rows", type=int, default=744_963)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    con = duckdb.connect()
    t0 = time.perf_counter()
    simulate(con, args.rows)
    n1 = con.execute("SELECT avg(defected) FROM calls").fetchall()[0][0]
    print(f"simulated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s (event rate {n1:.3f}); reducing:")
    tables, secs = build(con, args.rows, args.seed)
    evs = {}
    for key, formula in (("main", MAIN), ("second", SECOND)):
        evs[key] = duckquash.evaluate(con, "calls", tables, formula, "binomial",
                                      plot=os.path.join(args.out, f"figure1_{key}.png"))
        print(evs[key], "\n", flush=True)
    main_rows = {r["method"]: r for r in evs["main"].table.to_pylist()}
    second_rows = {r["method"]: r for r in evs["second"].table.to_pylist()}
    lines = ["| method | M | reduction N/M | MSE main effects | MSE second order | time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for label in tables:
        a, b = main_rows[label], second_rows[label]
        lines.append(f"| {label} | {a['M']:,} | {a['reduction']:,.1f} | {a['mse']:.4g} | {b['mse']:.4g} | "
                     f"{secs[label]:.2f} |")
    hr = main_rows["HypRect(1)"]
    unif = main_rows["1% sample"]
    osm = min((v for k, v in main_rows.items() if k.startswith("OSMAC")), key=lambda v: v["mse"])
    um1 = next(v for k, v in main_rows.items() if k.startswith("uniform ("))
    goal = [f"HypRect(1) main-effects MSE {hr['mse']:.4g} (goal <= 0.5: {'met' if hr['mse'] <= 0.5 else 'NOT met'})",
            f"1% sample / HypRect(1): {unif['mse'] / hr['mse']:,.0f}x; uniform at equal M / HypRect(1): "
            f"{um1['mse'] / hr['mse']:,.0f}x (goal >= 100x)",
            f"best OSMAC at equal M: {osm['method']} {osm['mse']:.4g} "
            f"({'above' if osm['mse'] > hr['mse'] else 'below'} HypRect(1))"]
    md = "\n".join([f"N = {args.rows:,} simulated rows, event rate {n1:.3f}; full fits: main effects "
                    f"{evs['main'].full_fit_seconds:.1f}s, second order {evs['second'].full_fit_seconds:.1f}s.",
                    "", *lines, "", *[f"- {g}" for g in goal], "",
                    "Main-effects model, all measures:", "", evs["main"].to_markdown(), "",
                    "Second-order model, all measures:", "", evs["second"].to_markdown(), ""])
    with open(os.path.join(args.out, "table1.md"), "w") as f:
        f.write(md)
    print("\n".join(lines + [""] + goal))
    print(f"\nwrote {args.out}/table1.md, figure1_main.png, figure1_second.png")


if __name__ == "__main__":
    main()
