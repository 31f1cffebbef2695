"""The seed's "larger-than-memory regression" (shared/seeds/000_*.txt), end to end in DuckDB.

The seed writes a 2.5M-row table (four standard-normal columns a, b, c, d and a five-level
``cat1``), builds the design of ``0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment,
levels=lnames)`` chunk by chunk with patsy into PyTables, and solves X'X beta = X'y with dask.
Here: write the same data as CSV with DuckDB, fit the formula exactly with :func:`duckquash.glm`
straight from the CSV (one SQL pass: Gaussian), print the coefficients next to the true beta,
the design's singular values from X'X (one more pass), then squash the CSV and fit again.

The squashed fit is only approximate for this model: its X'X and X'y need moments of degree 3
and 4 of (a, b, c, d, y) (e.g. a^2 b c, a b y), which the squash matches approximately, and with
2.5M rows the full-data standard errors are tiny, so the z-errors of the interaction terms are
large while the main effects are within 0.4 SE: with the default (adaptive) squash, 108,457
points, this prints MSE of z = 5.72 (d:c -7.9, a:c -1.8, a:b 1.4 SE; 2026-12-02). Use the exact fit.

Run:  python examples/larger_than_memory_regression.py [--rows 2500000] [--csv PATH]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import duckdb
import numpy as np

import duckquash


def literal(value: object) -> str:
    """A SQL literal: a number as written, a string single-quoted."""
    return repr(value) if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'"

FORMULA = "0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment, levels=lnames)"
LEVELS = {"lnames": [0, 1, 2, 3, 4]}
# the seed's beta = arange(0, 1, 1/12), in patsy's column order (categorical columns first)
_PATSY_ORDER = [f"C(cat1, Treatment, levels=lnames)[{k}]" for k in range(5)] + \
    ["a", "b", "c", "d", "d:c", "a:b", "a:c"]
TRUE_BETA = dict(zip(_PATSY_ORDER, np.arange(0, 1, 1.0 / 12)))


def write_csv(path: str, rows: int = 2_500_000) -> None:
    """The seed's synthetic data, y = X beta + N(0, 1), from hashes of the row number (any thread count)."""
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    g = lambda k: f"sqrt(-2 * ln({u(k)})) * cos(2 * pi() * {u(k + 1)})"  # noqa: E731 - standard normal
    con = duckdb.connect()
    con.execute(f"CREATE TABLE x AS SELECT i, {g(1)} AS a, {g(3)} AS b, {g(5)} AS c, {g(7)} AS d, "
                f"floor({u(9)} * 5)::INT AS cat1 FROM range({int(rows)}) t(i)")
    design = duckquash.build_design(con, "x", FORMULA, levels=LEVELS)
    mean = " + ".join(f"{literal(float(TRUE_BETA[n]))} * {e}" for n, e in zip(design.names, design.exprs))
    con.execute(f"COPY (SELECT a, b, c, d, cat1, {mean} + {g(11)} AS y FROM x ORDER BY i) "
                f"TO {literal(path)} (FORMAT CSV, HEADER)")
    con.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_500_000)
    ap.add_argument("--csv", help="where to write the CSV (default: a temporary file, removed after)")
    args = ap.parse_args(argv)
    tmp = None
    if args.csv is None:
        tmp = tempfile.mkdtemp(prefix="duckquash-seed-")
        args.csv = os.path.join(tmp, "seed.csv")
    try:
        t0 = time.perf_counter()
        write_csv(args.csv, args.rows)
        print(f"wrote {args.rows:,} rows to {args.csv} ({os.path.getsize(args.csv) / 2**20:,.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f}s")
        con = duckdb.connect()
        t0 = time.perf_counter()
        fit = duckquash.glm(con, args.csv, "y ~ " + FORMULA, "gaussian", levels=LEVELS)
        t_fit = time.perf_counter() - t0
        print(f"\nexact OLS from the CSV with duckquash.glm: {t_fit:.2f}s, {fit.n_passes} SQL pass(es)")
        print(f"{'term':40s} {'estimate':>9s} {'std err':>9s} {'true':>7s}")
        for name, b, se in zip(fit.exog_names, fit.params, fit.bse):
            print(f"{name:40s} {b:9.4f} {se:9.4f} {TRUE_BETA[name]:7.3f}")
        t0 = time.perf_counter()
        cp = duckquash.crossprod(con, args.csv, FORMULA, levels=LEVELS)  # X'X in one SQL pass
        print(f"\nsingular values of the design (from X'X, {time.perf_counter() - t0:.2f}s):\n"
              f"{np.round(cp.singular_values, 1)}\nrank {cp.rank}, condition number {cp.condition_number:.2f}")
        t0 = time.perf_counter()
        sq = duckquash.squash(con, args.csv, categorical=["cat1"], quantitative=["a", "b", "c", "d", "y"],
                              into="seed_squashed")
        t_sq = time.perf_counter() - t0
        t0 = time.perf_counter()
        red = duckquash.glm(con, "seed_squashed", "y ~ " + FORMULA, "gaussian", levels=LEVELS)
        t_red = time.perf_counter() - t0
        z = (red.params - fit.params) / fit.bse
        print(f"\nsquashed to {sq.n_points:,} weighted rows ({sq.n_rows / sq.n_points:,.0f}x smaller) in {t_sq:.1f}s; "
              f"fit on it in {t_red:.3f}s")
        print(f"{'term':40s} {'full':>9s} {'squashed':>9s} {'z':>8s}")
        for name, b, br, zz in zip(fit.exog_names, fit.params, red.params, z):
            print(f"{name:40s} {b:9.4f} {br:9.4f} {zz:8.4f}")
        print(f"MSE of z = (beta_squashed - beta_full) / SE_full: {np.mean(z ** 2):.2e}; "
              f"SE ratio squashed/full: {np.min(red.bse / fit.bse):.4f}..{np.max(red.bse / fit.bse):.4f}")
    finally:
        if tmp is not None:
            if os.path.exists(args.csv):
                os.unlink(args.csv)
            os.rmdir(tmp)


if __name__ == "__main__":
    main()
