"""Transactions and short-lived database objects (registered Arrow data, TEMP tables).

Every multi-statement change duckquash makes runs inside :class:`Transaction`, so an error or
interruption leaves the database as it was; helpers here create and always remove the
temporary objects a stage needs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import duckdb
import pyarrow as pa

from ..errors import InputError
from ..sql.names import temp_name
from ..sql.quote import ident


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` holds an explicit open transaction (BEGIN without COMMIT/ROLLBACK yet).

    Outside one every statement runs in its own transaction, so two statements see two ids.
    """
    ids = [con.execute("SELECT txid_current()").fetchall()[0][0] for _ in range(2)]
    return ids[0] == ids[1]


def refuse_open_transaction(con: duckdb.DuckDBPyConnection, what: str) -> None:
    """Refuse, before touching anything, to run ``what`` (which commits its own transaction) inside the
    caller's open transaction: its uncommitted rows would be lost or committed behind its back."""
    if in_transaction(con):
        raise InputError(f"{what} runs and commits its own transaction; commit or roll back the open "
                         "transaction on this connection first (nothing was changed)")


class Transaction:
    """BEGIN ... COMMIT on ``con``, ROLLBACK on any error (so a failed change leaves nothing)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        try:
            self.con.execute("BEGIN TRANSACTION")
        except duckdb.TransactionException as e:
            raise InputError(f"duckquash runs its own transaction; commit or roll back the open one first ({e})") from None
        return self.con

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.con.execute("COMMIT")
        else:
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass
        return False


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, data: pa.Table, kind: str = "arrow") -> Iterator[str]:
    """``data`` visible to SQL under a fresh (unquoted) name for the body's duration."""
    name = temp_name(kind)
    con.register(name, data)
    try:
        yield name
    finally:
        con.unregister(name)


def create_temp(con: duckdb.DuckDBPyConnection, sql: str, kind: str = "tmp") -> str:
    """``CREATE TEMP TABLE <fresh name> AS <sql>``; returns the (unquoted) name. Drop it with :func:`drop_temp`."""
    name = temp_name(kind)
    con.execute(f"CREATE TEMP TABLE {ident(name)} AS {sql}")
    return name


def drop_temp(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    """Drop TEMP tables made by :func:`create_temp`, ignoring ones already gone."""
    for n in names:
        try:
            con.execute(f"DROP TABLE IF EXISTS temp.{ident(n)}")
        except duckdb.Error:
            pass
