"""Progress bars on stderr: SQL passes fed by DuckDB's ``query_progress()``, other stages by elapsed time.

DuckDB's figure is an average over the query's pipelines. A moment pass (scan -> GROUP BY ->
ORDER BY -> result) has three, and the first one, the streaming scan and aggregation, is nearly
all of the work: the raw figure climbs to about 33% and then sits there until the query ends
(measured: 32% after 14 s of a 14.4 s pass). So each bar is told the share of the first
pipeline, shows *that* pipeline's progress as "<label>: scan", and then "<label>: finish"
while the remaining small pipelines run. When stderr is not a terminal (a log file, CI), each
stage prints one line when it ends instead.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator

import duckdb

BAR_FORMAT = "{desc:>18} {bar} {percentage:3.0f}% {elapsed}"


def _ignore(_: int) -> None:
    """The count callback of a bar that is not shown."""


def phase_of(raw: float, scan_share: float) -> tuple[str, float]:
    """Map DuckDB's whole-query percentage to (phase, percent of that phase)."""
    if raw < 0:
        return "start", 0.0
    scan = raw / scan_share
    if scan < 100.0:
        return "scan", scan
    return "finish", 100.0


@contextlib.contextmanager
def progress(con: duckdb.DuckDBPyConnection | None, label: str, enabled: bool,
             scan_share: float = 1.0, total: int | None = None,
             unit: str = "items") -> Iterator[Callable[[int], None]]:
    """Show a bar for the body; poll ``con.query_progress()`` from a thread, or count ``total`` items
    (the body calls the yielded function with how many it finished), or only time it.

    ``scan_share`` is the fraction of DuckDB's percentage that the query's first (scan)
    pipeline accounts for: 1/3 for scan -> GROUP BY -> ORDER BY, 1/2 for scan -> top-k.
    """
    if not enabled:
        yield _ignore
        return
    if not sys.stderr.isatty():  # a log file: one line per stage, not a stream of \r frames
        t0 = time.perf_counter()
        yield _ignore
        what = f" ({total:,} {unit})" if total is not None else ""
        print(f"{label}: done in {time.perf_counter() - t0:.1f}s{what}", file=sys.stderr, flush=True)
        return
    from tqdm import tqdm

    if total is not None:  # counted by the body, from the caller's thread
        bar = tqdm(total=total, desc=label, leave=False, unit=f" {unit}",
                   bar_format="{desc:>18} {bar} {n_fmt}/{total_fmt}{unit} {elapsed}")
        try:
            yield bar.update
        finally:
            bar.close()
        return
    if con is None:
        bar = tqdm(total=None, desc=label, leave=False, bar_format="{desc:>18} running {elapsed}")
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                bar.refresh()

        thread = threading.Thread(target=tick, daemon=True)
    else:
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        bar = tqdm(total=100, desc=label, unit="%", leave=False, bar_format=BAR_FORMAT)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.1):
                try:
                    raw = con.query_progress()
                except duckdb.Error:
                    continue
                if raw is None or raw < 0:
                    continue
                phase, pct = phase_of(float(raw), scan_share)
                bar.set_description_str(f"{label}: {phase}", refresh=False)
                bar.n = pct
                bar.refresh()

        thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield _ignore
    finally:
        stop.set()
        thread.join()
        bar.close()
