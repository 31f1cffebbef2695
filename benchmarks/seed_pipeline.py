"""The seed's regression (shared/seeds/000_*.txt): duckquash.glm vs pandas chunks + patsy + PyTables + dask.

Both fit ``y ~ 0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment, levels=lnames)`` by
exact least squares on the same 2.5M-row CSV (written by
``examples/larger_than_memory_regression.py``). Each pipeline runs in its own process under
``/usr/bin/time -v`` (peak RSS, wall clock including imports); the child also reports the
wall time of the work alone (after imports). Runs alternate, ``--repeat`` times each; the
coefficients of the pipelines are checked to agree. A third, reference row: one hand-written
DuckDB pass of X'X and X'y over the same design (what a Gaussian fit needs at least).

The seed pipeline: ``pd.read_csv(chunksize=50000)`` -> ``patsy.dmatrices`` per chunk -> append to
zlib-compressed PyTables EArrays -> ``dask.array`` ``solve(X'X, X'y)``, as in the seed.

Install its optional dependencies first:  pip install tables dask patsy
Run:  python benchmarks/seed_pipeline.py [--rows 2500000] [--dir DIR] [--repeat 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "larger_than_memory_regression.py")


def _example():
    spec = importlib.util.spec_from_file_location("seed_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child_duckquash(csv: str, work: str) -> dict:
    import duckdb

    import duckquash

    ex = _example()
    t0 = time.perf_counter()
    con = duckdb.connect()
    fit = duckquash.glm(con, csv, "y ~ " + ex.FORMULA, "gaussian", levels=ex.LEVELS)
    return {"seconds": time.perf_counter() - t0, "params": dict(zip(fit.exog_names, map(float, fit.params)))}


def child_xtx(csv: str, work: str) -> dict:
    """Reference: one hand-written SQL pass of X'X and X'y over the same design, numpy solve."""
    import duckdb
    import numpy as np

    import duckquash
    from duckquash.sql.quote import comma, literal

    ex = _example()
    t0 = time.perf_counter()
    con = duckdb.connect()
    src = f"read_csv({literal(csv)})"
    d = duckquash.build_design(con, src, "y ~ " + ex.FORMULA, levels=ex.LEVELS)
    k = len(d.exprs)
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    aggs = [f"sum(({d.exprs[i]}) * ({d.exprs[j]}))" for i, j in pairs]
    aggs += [f"sum(({e}) * ({d.response}))" for e in d.exprs]
    row = con.execute(f"SELECT {comma(aggs)} FROM {src} WHERE {d.where}").fetchall()[0]
    xtx = np.zeros((k, k))
    for (i, j), v in zip(pairs, row):
        xtx[i, j] = xtx[j, i] = v
    beta = np.linalg.solve(xtx, np.array(row[len(pairs):]))
    return {"seconds": time.perf_counter() - t0, "params": dict(zip(d.names, map(float, beta)))}


def child_seed(csv: str, work: str) -> dict:
    import numpy as np
    import pandas as pd
    import tables
    from dask import array as da
    from patsy import EvalEnvironment, dmatrices

    ex = _example()
    t0 = time.perf_counter()
    env = EvalEnvironment([{"lnames": list(ex.LEVELS["lnames"])}])
    formula = "y ~ " + ex.FORMULA
    h5name = os.path.join(work, "design-test.h5")
    h5 = tables.open_file(h5name, mode="w")
    names = None
    x_arr = y_arr = None
    for chunk in pd.read_csv(csv, chunksize=50_000):
        y, x = dmatrices(formula, chunk, eval_env=env)
        if x_arr is None:
            names = x.design_info.column_names
            filt = tables.Filters(complevel=1, complib="zlib")
            x_arr = h5.create_earray(h5.root, "X", tables.Float64Atom(), shape=(0, x.shape[1]), filters=filt,
                                     expectedrows=2_500_000)
            y_arr = h5.create_earray(h5.root, "Y", tables.Float64Atom(), shape=(0,), filters=filt,
                                     expectedrows=2_500_000)
        x_arr.append(np.asarray(x))
        y_arr.append(np.asarray(y)[:, 0])
    h5.close()
    h5 = tables.open_file(h5name, mode="r")
    xm, ym = da.from_array(h5.root.X), da.from_array(h5.root.Y)
    beta = da.linalg.solve(da.matmul(xm.T, xm), da.matmul(xm.T, ym)).compute()
    h5.close()
    os.unlink(h5name)
    return {"seconds": time.perf_counter() - t0, "params": dict(zip(names, map(float, beta)))}


def run(kind: str, csv: str, work: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, os.path.abspath(__file__), "--child", kind, csv, "--dir", work]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {**out, "wall": wall, "rss_mib": rss / 1024}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_500_000)
    ap.add_argument("--dir", help="folder for the CSV and the HDF5 file (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "CSV"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, csv = args.child
        res = {"duckquash": child_duckquash, "seed": child_seed, "xtx": child_xtx}[kind](csv, args.dir)
        print(json.dumps(res))
        return
    work = args.dir or tempfile.mkdtemp(prefix="duckquash-seedbench-")
    os.makedirs(work, exist_ok=True)
    csv = os.path.join(work, f"seed_{args.rows}.csv")
    if not os.path.exists(csv):
        t0 = time.perf_counter()
        _example().write_csv(csv, args.rows)
        print(f"wrote {csv} ({os.path.getsize(csv) / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f}s")
    results: dict[str, list[dict]] = {"duckquash": [], "seed": [], "xtx": []}
    for r in range(args.repeat):
        for kind in results:
            res = run(kind, csv, work)
            results[kind].append(res)
            print(f"  run {r + 1} {kind:10s} work {res['seconds']:6.2f}s  process {res['wall']:6.2f}s  "
                  f"peak RSS {res['rss_mib']:6.0f} MiB", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("seconds", "wall", "rss_mib")}
           for k, v in results.items()}
    a, b = results["duckquash"][0]["params"], results["seed"][0]["params"]
    c = results["xtx"][0]["params"]
    diff = max(max(abs(a[n] - b[n]), abs(a[n] - c[n])) for n in a)
    print(f"\nrows {args.rows:,}; median of {args.repeat} runs each; max |coefficient difference| {diff:.2e}")
    print("| pipeline | work (s) | process wall (s) | peak RSS (MiB) |\n|---|---:|---:|---:|")
    for k, label in (("seed", "seed: pandas chunks + patsy + PyTables + dask"), ("duckquash", "duckquash.glm"),
                     ("xtx", "reference: one hand-written SQL pass of X'X, X'y (WHERE, no FILTER)")):
        print(f"| {label} | {med[k]['seconds']:.2f} | {med[k]['wall']:.2f} | {med[k]['rss_mib']:.0f} |")
    print(f"speed-up (work) {med['seed']['seconds'] / med['duckquash']['seconds']:.1f}x, "
          f"(process) {med['seed']['wall'] / med['duckquash']['wall']:.1f}x; "
          f"peak RSS ratio {med['seed']['rss_mib'] / med['duckquash']['rss_mib']:.2f}")
    if args.dir is None:
        os.unlink(csv)
        os.rmdir(work)


if __name__ == "__main__":
    main()
