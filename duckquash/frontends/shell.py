"""``duckquash sql``: SQL on a DuckDB database with duckquash's macros installed, for analysts who
would rather not write Python.

``CALL squash(...)`` needs a Python process: DuckDB's Python API registers Python functions, not
native table functions, so the macros exist only on connections that ``duckquash.install`` set
up. This module is that process: a one-shot runner (``-c``, ``-f``) and a small prompt. The user's
own SQL runs as written (it is their prompt, like DuckDB's shell); results print as DuckDB's
boxes, or as CSV.
"""
from __future__ import annotations

import csv
import os
import sys
from typing import TextIO

import duckdb

from ..errors import DuckquashError
from .sqlapi import connect

PROMPT, MORE = "duckquash> ", "      ...> "
_SHOWN = {"SELECT", "CALL", "EXPLAIN", "PRAGMA", "RELATION"}


def _print_result(rel: duckdb.DuckDBPyRelation | None, out: TextIO, as_csv: bool) -> None:
    if rel is None:
        return
    if as_csv:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(rel.columns)
        for row in rel.fetchall():
            w.writerow(["" if v is None else v for v in row])
    else:
        text = str(rel)
        out.write(text if text.endswith("\n") else text + "\n")


def run_statements(con: duckdb.DuckDBPyConnection, text: str, out: TextIO = sys.stdout,
                   as_csv: bool = False) -> None:
    """Run every statement of ``text`` in order, printing each result; stops at the first error."""
    for stmt in con.extract_statements(text):
        rel = con.sql(stmt.query)
        if stmt.type.name in _SHOWN:  # CREATE ... AS, INSERT, ... return a row count: not printed, as in DuckDB's shell
            _print_result(rel, out, as_csv)


def _complete(con: duckdb.DuckDBPyConnection, text: str) -> bool:
    """Whether ``text`` holds whole statements (ends with ';' outside quotes, as DuckDB parses it)."""
    stripped = text.rstrip()
    if not stripped.endswith(";"):
        return False
    try:
        con.extract_statements(stripped)
    except duckdb.ParserException as e:
        return "unterminated" not in str(e).lower()  # a real syntax error is complete: report it
    return True


def _prompt(con: duckdb.DuckDBPyConnection, as_csv: bool) -> int:
    try:
        import readline  # noqa: F401 - line editing and history where available
    except ImportError:
        pass
    print(f"duckquash SQL on DuckDB {duckdb.__version__}: CALL squash('table', categorical := [...], "
          "quantitative := [...]); end statements with ';', .quit to leave", file=sys.stderr)
    buf = ""
    while True:
        try:
            line = input(MORE if buf else PROMPT)
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:  # Ctrl-C drops the statement being typed, as DuckDB's shell does
            print(file=sys.stderr)
            buf = ""
            continue
        if not buf and line.strip() in (".quit", ".exit", "\\q"):
            return 0
        buf += line + "\n"
        if not _complete(con, buf):
            continue
        text, buf = buf, ""
        try:
            run_statements(con, text, sys.stdout, as_csv)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
        except (duckdb.Error, DuckquashError) as e:
            print(f"Error: {e}", file=sys.stderr)


def run_sql(database: str = ":memory:", *, command: str | None = None, file: str | None = None,
            csv: bool = False, read_only: bool = False) -> int:
    """Open ``database`` with the macros installed; run ``command`` or ``file``, else prompt."""
    if command is not None and file is not None:
        raise DuckquashError("give -c SQL or -f FILE, not both")
    if database != ":memory:" and read_only and not os.path.exists(database):
        raise DuckquashError(f"database file {database!r} does not exist")
    if file is not None:
        if not os.path.isfile(file):
            raise DuckquashError(f"SQL file {file!r} does not exist")
        with open(file, encoding="utf-8") as fh:
            command = fh.read()
    con = connect(database, read_only=read_only) if database != ":memory:" else connect()
    try:
        if command is not None:
            run_statements(con, command, sys.stdout, csv)
            return 0
        return _prompt(con, csv)
    finally:
        con.close()
