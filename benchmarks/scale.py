"""Squash at scale: 100M rows of Parquet under SET memory_limit='1GB', a 1M-row refresh, many regions.

Run:  python benchmarks/scale.py [--rows 100000000] [--files 20] [--data DIR] [--many-rows 20000000]

Data: 5 skewed continuous columns, 2 categoricals (3 and 4 levels) and a binary response ``y``
(a logistic function of the others), made deterministically from hashes of the row number and
written as ``--files`` Parquet files. Every phase runs in its own process (peak RSS from wait4):

1. plain: ``count(*) + sum(x1..x5) GROUP BY a1, a2, y`` over all files (best of 2): the cost bar;
2. materialize: the squash (categoricals a1, a2, y; x1..x5; HypRect bins=3) kept as a refreshable
   view in a DuckDB file, with seconds per stage;
3. refresh: a later process folds 1M new rows into the view;
4. many regions: the first ``--many-rows`` rows with bins=6 (100k+ regions): generate time per region.

Measured (2 cores shared with other jobs):
  20M rows: plain scan 0.8 s; materialize 121.7 s = 149x (group 3.7 s, momentize 23.9 s, generate
  93.8 s), peak RSS 427 MiB; refresh of 1M rows 7.4 s = 6.0% of it (5,564 of 5,827 changed regions
  updated in closed form, 263 re-solved), peak RSS 543 MiB. (An earlier run at load ~14: 669 s.)
  Many regions, 5M rows, bins=6, --threads 1: R=169,181, generate 1.87 ms/region, RSS 1,546 MiB
  (with 2 DuckDB threads the moment GROUP BY runs out of memory under memory_limit='1GB').
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import duckdb

QUANT = ["x1", "x2", "x3", "x4", "x5"]
CATS = ["a1", "a2", "y"]


def make_files(folder: str, rows: int, files: int, offset: int = 0, prefix: str = "part") -> list[str]:
    """Deterministic data from hashes of the row number (no RNG state, any thread count)."""
    os.makedirs(folder, exist_ok=True)
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    normal = lambda k: f"(sqrt(-2 * ln({u(k)})) * cos(6.283185307179586 * {u(k + 1)}))"  # noqa: E731
    con = duckdb.connect()
    paths = []
    per = -(-rows // files)
    for f in range(files):
        path = os.path.join(folder, f"{prefix}-{f:03d}.parquet")
        paths.append(path)
        lo, hi = offset + f * per, offset + min(rows, (f + 1) * per)
        if os.path.exists(path):
            continue
        con.execute(f"""COPY (
            SELECT a1, a2, x1, x2, x3, x4, x5,
                   ({u(14)} < 1 / (1 + exp(-(-1 + 0.3 * a1 - 0.2 * a2 + 0.4 * x1 - 0.1 * x2 + 0.2 * x3
                                          - 0.3 * x4 + 0.1 * x5))))::INT AS y
            FROM (SELECT i, floor({u(1)} * 3)::INT AS a1, floor({u(2)} * 4)::INT AS a2,
                         exp(0.5 * {normal(3)}) AS x1, 3 * exp(0.5 * ({normal(3)} + {normal(5)}) / 1.4) + 1 AS x2,
                         exp(0.5 * {normal(7)}) AS x3, {normal(9)} ^ 2 AS x4,
                         exp(0.5 * (0.7 * {normal(3)} + 0.7 * {normal(11)})) AS x5
                  FROM range({lo}, {hi}) t(i))
        ) TO '{path}' (FORMAT PARQUET)""")
    con.close()
    return paths


def child(phase: str, args: argparse.Namespace) -> dict:
    import duckquash

    db = os.path.join(args.data, "scale.duckdb")
    files = os.path.join(args.data, "part-*.parquet")
    con = duckdb.connect(db)
    con.execute("SET memory_limit = '1GB'")
    con.execute(f"SET temp_directory = '{os.path.join(args.data, 'spill')}'")
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    out: dict = {}
    if phase == "plain":
        sql = (f"SELECT a1, a2, y, count(*), {', '.join(f'sum({c})' for c in QUANT)} "
               f"FROM read_parquet('{files}') GROUP BY ALL")
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            con.execute(sql).fetchall()
            times.append(time.perf_counter() - t0)
        out["plain_s"] = min(times)
    elif phase == "materialize":
        t0 = time.perf_counter()
        res = duckquash.materialize(con, "scale_view", files, categorical=CATS, quantitative=QUANT, replace=True)
        out.update(total_s=time.perf_counter() - t0, stages=res.timings, N=res.n_rows, M=res.n_points, R=res.n_regions)
    elif phase == "refresh":
        t0 = time.perf_counter()
        path = os.path.join(args.data, f"new-{args.batch:03d}.parquet")
        rep = duckquash.refresh(con, "scale_view", path, batch_id=f"new-1M-{args.batch}")
        out.update(total_s=time.perf_counter() - t0, stages=rep.timings, N=rep.n_rows, changed=rep.n_changed_regions,
                   updated=rep.n_updated_regions, drift=rep.drift, M=rep.n_points)
    elif phase == "many":
        parts = sorted(glob.glob(files))
        per = max(1, round(args.many_rows / (args.rows / len(parts))))
        src = "SELECT * FROM read_parquet([" + ", ".join(f"'{p}'" for p in parts[:per]) + "])"
        t0 = time.perf_counter()
        res = duckquash.materialize(con, "many_view", src, categorical=CATS, quantitative=QUANT, bins=6, replace=True)
        out.update(total_s=time.perf_counter() - t0, stages=res.timings, N=res.n_rows, M=res.n_points, R=res.n_regions)
    con.close()
    return out


def run(phase: str, argv: list[str]) -> tuple[dict, float]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", phase] + argv, stdout=subprocess.PIPE, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"phase {phase} failed: status {status}")
    return json.loads(text.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # KiB -> MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--many-rows", type=int, default=20_000_000)
    ap.add_argument("--data", default="/tmp/duckquash-scale")
    ap.add_argument("--phases", default="plain,materialize,refresh,many")
    ap.add_argument("--batch", type=int, default=0, help="which 1M-row batch the refresh phase folds in")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (0: default); 1 lets 100k+ regions fit 1GB")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    argv = ["--rows", str(args.rows), "--files", str(args.files), "--many-rows", str(args.many_rows), "--data", args.data,
            "--batch", str(args.batch), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    make_files(args.data, args.rows, args.files)
    for b in range(args.batch + 1):  # 1M-row batches after the main rows
        target = os.path.join(args.data, f"new-{b:03d}.parquet")
        if not os.path.exists(target):
            os.replace(make_files(os.path.join(args.data, f"tmp-new-{b}"), 1_000_000, 1,
                                  offset=args.rows + b * 1_000_000)[0], target)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(args.data, "*.parquet")))
    print(f"data: {args.rows:,} rows in {args.files} Parquet files + 1M new rows, {size / 2**30:.1f} GiB "
          f"(ready in {time.perf_counter() - t0:.0f}s); memory_limit=1GB in every phase", flush=True)
    res: dict = {}
    for phase in args.phases.split(","):
        res[phase] = run(phase, argv)
        r, rss = res[phase]
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in r.get("stages", {}).items())
        if phase == "plain":
            print(f"plain GROUP BY scan     : {r['plain_s']:.1f}s ({args.rows / r['plain_s'] / 1e6:.0f}M rows/s), "
                  f"peak RSS {rss:,.0f} MiB", flush=True)
        elif phase == "materialize":
            ratio = f", {r['total_s'] / res['plain'][0]['plain_s']:.1f}x the plain scan" if "plain" in res else ""
            print(f"materialize (squash)    : {r['total_s']:.1f}s ({r['N'] / r['total_s'] / 1e6:.2f}M rows/s{ratio}; "
                  f"target <= 15x) [{stages}]; N={r['N']:,} -> M={r['M']:,} in R={r['R']:,} regions; "
                  f"peak RSS {rss:,.0f} MiB (target < 1536)", flush=True)
        elif phase == "refresh":
            share = f", {100 * r['total_s'] / res['materialize'][0]['total_s']:.1f}% of the squash (target < 5%)" \
                if "materialize" in res else ""
            print(f"refresh 1M new rows     : {r['total_s']:.1f}s{share} [{stages}]; {r['changed']:,} regions "
                  f"changed ({r.get('updated', 0):,} updated in closed form, the rest re-solved); N={r['N']:,}; drift {100 * r['drift']:.3f}%; peak RSS {rss:,.0f} MiB", flush=True)
        elif phase == "many":
            g = r["stages"]["generate"]
            print(f"many regions (bins=6)   : {r['total_s']:.1f}s [{stages}]; N={r['N']:,} -> M={r['M']:,} in "
                  f"R={r['R']:,} regions; generate {1e3 * g / r['R']:.2f} ms/region; peak RSS {rss:,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
