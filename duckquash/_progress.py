"""A progress bar on stderr for long SQL passes, fed by DuckDB's ``query_progress()``."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import duckdb


@contextlib.contextmanager
def progress(con: duckdb.DuckDBPyConnection, label: str, enabled: bool) -> Iterator[None]:
    """Poll ``con.query_progress()`` from a thread while the body runs; no-op when disabled."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    stop = threading.Event()
    bar = tqdm(total=100, desc=label, unit="%", leave=False, bar_format="{desc:>10} {bar} {percentage:3.0f}%")

    def poll() -> None:
        while not stop.wait(0.1):
            try:
                p = con.query_progress()
            except duckdb.Error:
                continue
            if p is not None and p >= 0:
                bar.n = min(100.0, float(p))
                bar.refresh()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
