"""Squash 20M rows (5 continuous, 2 categoricals) from Parquet; compare with one plain DuckDB pass.

Run:  python benchmarks/squash_20m.py [--rows 20000000] [--data DIR] [--methods hyprect,adaptive]

Two designs: ``hyprect`` (the paper's: a few thousand regions, whatever N) and ``adaptive`` (the
default: regions of ~100 rows, so N / 84 regions here: the many-regions run). Prints, measured in
this run: the plain ``count(*) + sum(x1..x5) GROUP BY a1, a2`` pass over the same file, the squash
time per stage and each stage's ratio to the plain pass, Generate's milliseconds per region (wall
and CPU), and peak RSS of each configuration (run in its own process), with DuckDB's default
memory limit and with ``SET memory_limit='1GB'``. Also two floors for the moment pass, same file and run: 125 plain
DOUBLE sums grouped by the two categoricals only (the cheapest form of 125 aggregates), and the
same 125 sums over the squash's regions (so the cost of the aggregate count and of the region
count can be told apart from the cost of exact fixed-point sums).
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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    u = lambda k: f"((hash(i * 16 + {k}) >> 11)::DOUBLE / 9007199254740992.0 + 1e-12)"  # noqa: E731
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT floor({u(1)} * 3)::INT AS a1, floor({u(2)} * 4)::INT AS a2,
        exp({u(3)} * 2) AS x1, {u(4)} + 0.5 * {u(5)} AS x2, -ln({u(6)}) AS x3,
        {u(7)} * {u(8)} AS x4, sqrt({u(9)}) + 0.3 * -ln({u(6)}) AS x5
        FROM range({rows}) t(i)) TO '{path}' (FORMAT PARQUET)""")


def child(path: str, memory_limit: str | None, method: str) -> dict:
    """One configuration, in this process: plain pass, then the squash."""
    import duckquash
    from duckquash.ds.moments import attached, keyed_rows_sql

    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    src = f"read_parquet('{path}')"
    plain_sql = (f"SELECT a1, a2, count(*), {', '.join(f'sum({c})' for c in QUANT)} "
                 f"FROM {src} GROUP BY a1, a2")
    plain, plain_cpu = best_of(con, plain_sql, 3)
    t0, c0 = time.perf_counter(), time.process_time()
    sq = duckquash.squash(con, path, categorical=CATS, quantitative=QUANT, method=method, into="sq")
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    # floors for the moment pass: 125 distinct DOUBLE sums, few groups vs the squash's regions
    sums = ", ".join(f"sum({QUANT[i % 5]} * {1 + i // 5})" for i in range(125))
    floor_cells, floor_cells_cpu = best_of(con, f"SELECT a1, a2, count(*), {sums} FROM {src} GROUP BY a1, a2", 1)
    regions = f"({keyed_rows_sql(src, sq.report.binning, tuple(CATS))})"  # the rows with their region keys
    keys = ", ".join(["a1", "a2"] + list(sq.report.moments.key_columns))
    sums_v = ", ".join(f"sum(__dq_v_{i % 5} * {1 + i // 5})" for i in range(125))
    with attached(con, sq.report.binning):  # adaptive regions' key tables
        floor_regions, floor_regions_cpu = best_of(con, f"SELECT {keys}, count(*), {sums_v} FROM {regions} GROUP BY {keys}", 1)
    return {"plain_s": plain, "squash_s": total, "stages": sq.report.timings,
            "floor_cells_s": floor_cells, "floor_regions_s": floor_regions,
            "plain_cpu": plain_cpu, "squash_cpu": total_cpu, "stages_cpu": sq.report.cpu_timings,
            "floor_cells_cpu": floor_cells_cpu, "floor_regions_cpu": floor_regions_cpu,
            "N": sq.n_rows, "M": sq.n_points, "R": sq.n_regions,
            "max_resid_deg2": sq.report.max_resid_deg2}


def best_of(con: duckdb.DuckDBPyConnection, sql: str, times: int) -> tuple[float, float]:
    """Best wall seconds and best process CPU seconds (all threads) of ``times`` runs."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(times):
        t0, c0 = time.perf_counter(), time.process_time()
        con.execute(sql).fetchall()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def run(path: str, memory_limit: str | None, method: str) -> tuple[dict, float]:
    cmd = ([sys.executable, __file__, "--child", path, "--methods", method]
           + (["--memory-limit", memory_limit] if memory_limit else []))
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
    ap.add_argument("--methods", default="hyprect,adaptive")
    ap.add_argument("--limits", default="default,1GB")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.memory_limit, args.methods)))
        return
    path = os.path.join(args.data, f"rows{args.rows}.parquet")
    t0 = time.perf_counter()
    make_data(path, args.rows)
    print(f"data: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, ready in {time.perf_counter() - t0:.1f}s)")
    for method in args.methods.split(","):
        for limit in args.limits.split(","):
            report(method, None if limit == "default" else limit, *run(path, None if limit == "default" else limit, method))


def report(method: str, limit: str | None, res: dict, rss: float) -> None:
    p = res["plain_s"]
    stages = ", ".join(f"{k} {v:.2f}s = {v / p:.1f}x" for k, v in res["stages"].items())
    print(f"\n{method}, memory_limit={limit or 'default'}: N={res['N']:,} M={res['M']:,} R={res['R']:,} "
          f"(reduction {res['N'] / res['M']:,.1f}x), max deg<=2 moment error {res['max_resid_deg2']:.1e}")
    print(f"  plain count+sum GROUP BY pass : {p:.2f}s (best of 3)")
    print(f"  squash total                  : {res['squash_s']:.2f}s  [{stages}]")
    print(f"  ratio squash / plain pass     : {res['squash_s'] / p:.1f}x  (target <= 15x)")
    print(f"  floor: 125 DOUBLE sums by a1,a2 : {res['floor_cells_s']:.2f}s = {res['floor_cells_s'] / p:.1f}x; "
          f"by the {res['R']:,} regions: {res['floor_regions_s']:.2f}s = {res['floor_regions_s'] / p:.1f}x")
    pc = res["plain_cpu"]
    stages_cpu = ", ".join(f"{k} {v:.2f}s = {v / pc:.1f}x" for k, v in res["stages_cpu"].items())
    print(f"  CPU seconds (all threads; steadier on a shared machine): plain {pc:.2f}s, "
          f"squash {res['squash_cpu']:.2f}s = {res['squash_cpu'] / pc:.1f}x [{stages_cpu}]; floors "
          f"{res['floor_cells_cpu']:.2f}s = {res['floor_cells_cpu'] / pc:.1f}x, "
          f"{res['floor_regions_cpu']:.2f}s = {res['floor_regions_cpu'] / pc:.1f}x")
    print(f"  generate per region           : {1e3 * res['stages']['generate'] / res['R']:.2f} ms wall, "
          f"{1e3 * res['stages_cpu']['generate'] / res['R']:.2f} ms CPU (all threads)  (target <= 1 ms)")
    print(f"  peak RSS                      : {rss:,.0f} MiB  (target < 1536 MiB)", flush=True)


if __name__ == "__main__":
    main()
