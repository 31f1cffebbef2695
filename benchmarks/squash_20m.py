"""Squash 20M rows (5 continuous, 2 categoricals) from Parquet; compare with one plain DuckDB pass.

Run:  python benchmarks/squash_20m.py [--rows 20000000] [--data DIR]

Prints, measured in this run: the plain ``count(*) + sum(x1..x5) GROUP BY a1, a2`` pass over the
same file, the squash time per stage, their ratio, and peak RSS of each configuration (run in its
own process), with DuckDB's default memory limit and with ``SET memory_limit='1GB'``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import duckdb

QUANT = ["x1", "x2", "x3", "x4", "x5"]
CATS = ["a1", "a2"]


def make_data(path: str, rows: int) -> None:
    """Deterministic skewed data from hashes of the row number (no RNG state, any thread count)."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT floor({u(1)} * 3)::INT AS a1, floor({u(2)} * 4)::INT AS a2,
        exp({u(3)} * 2) AS x1, {u(4)} + 0.5 * {u(5)} AS x2, -ln({u(6)}) AS x3,
        {u(7)} * {u(8)} AS x4, sqrt({u(9)}) + 0.3 * -ln({u(6)}) AS x5
        FROM range({rows}) t(i)) TO '{path}' (FORMAT PARQUET)""")


def child(path: str, memory_limit: str | None) -> dict:
    """One configuration, in this process: plain pass, then the squash."""
    import duckquash

    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    src = f"read_parquet('{path}')"
    plain_sql = (f"SELECT a1, a2, count(*), {', '.join(f'sum({c})' for c in QUANT)} "
                 f"FROM {src} GROUP BY a1, a2")
    plain = []
    for _ in range(3):
        t0 = time.perf_counter()
        con.execute(plain_sql).fetchall()
        plain.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    sq = duckquash.squash(con, path, categorical=CATS, quantitative=QUANT, into="sq")
    total = time.perf_counter() - t0
    return {"plain_s": min(plain), "squash_s": total, "stages": sq.report.timings,
            "N": sq.n_rows, "M": sq.n_points, "R": sq.n_regions,
            "max_resid_deg2": sq.report.max_resid_deg2}


def run(path: str, memory_limit: str | None) -> tuple[dict, float]:
    cmd = [sys.executable, __file__, "--child", path] + (["--memory-limit", memory_limit] if memory_limit else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark child failed ({memory_limit=}): status {status}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # KiB -> MiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--data", default="/tmp/duckquash-bench")
    ap.add_argument("--child")
    ap.add_argument("--memory-limit")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.memory_limit)))
        return
    path = os.path.join(args.data, f"rows{args.rows}.parquet")
    t0 = time.perf_counter()
    make_data(path, args.rows)
    print(f"data: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, ready in {time.perf_counter() - t0:.1f}s)")
    for limit in (None, "1GB"):
        res, rss = run(path, limit)
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in res["stages"].items())
        print(f"\nmemory_limit={limit or 'default'}: N={res['N']:,} M={res['M']:,} R={res['R']:,} "
              f"(reduction {res['N'] / res['M']:,.0f}x), max deg<=2 moment error {res['max_resid_deg2']:.1e}")
        print(f"  plain count+sum GROUP BY pass : {res['plain_s']:.2f}s (best of 3)")
        print(f"  squash total                  : {res['squash_s']:.2f}s  [{stages}]")
        print(f"  ratio squash / plain pass     : {res['squash_s'] / res['plain_s']:.1f}x  (target <= 15x)")
        print(f"  peak RSS                      : {rss:,.0f} MiB  (target < 1536 MiB)")


if __name__ == "__main__":
    main()
