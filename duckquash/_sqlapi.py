"""SQL entry point: ``CALL squash(...)`` / ``FROM squash(...)`` on a connection.

DuckDB's Python API offers scalar UDFs only, so a TEMP table macro (text in ``sql/squash.sql``)
calls a Python UDF that runs the pipeline on ``con.cursor()`` and writes the rows to a Parquet
file; the macro returns ``read_parquet`` of it. A table created by the cursor would not be
visible to the calling statement (it runs in its own transaction); a file is.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
import weakref
from importlib import resources

import duckdb
from duckdb.sqltypes import BIGINT, BOOLEAN, DOUBLE, INTEGER, VARCHAR

from ._errors import SourceNotFoundError
from ._lds import LdsSpec, squash_lds_to_arrow
from ._spec import SquashSpec
from ._squash import squash_to_arrow
from ._views import install_sql as install_views  # squash_refresh(...): materialised views
from ._writeback import write_file

_UDF = "__dq_squash_file"


def _macro_sql() -> str:
    """The macro text from the top-level ``sql/`` folder (installed as ``duckquash.sql``)."""
    return resources.files("duckquash.sql").joinpath("squash.sql").read_text(encoding="utf-8")


def install(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Make ``squash(...)`` callable from SQL on ``con``; returns ``con``.

    Inside SQL the pipeline reads through a separate cursor: it sees committed tables and views,
    files and queries, but not this connection's TEMP tables or uncommitted rows.
    """
    folder = tempfile.mkdtemp(prefix="duckquash-sql-")
    owner_ref = weakref.ref(con)

    def run(src: str, categorical: list, quantitative: list, method: str, alpha: float, weight: str,
            seed: int, bins: int, layers: int, formula: str | None = None, family: str = "binomial",
            size: int = 0, iterations: int = 1, init: str = "sample", profiles: str = "auto",
            refine: bool = False) -> str:
        owner = owner_ref()
        if owner is None:
            raise RuntimeError("the connection that installed squash() is closed")
        if str(method).lower() == "lds":
            spec = LdsSpec(formula, int(size), family, int(iterations), init, weight=weight, seed=int(seed),
                           profiles=profiles, refine=bool(refine))
            pipeline = squash_lds_to_arrow
        else:
            spec = SquashSpec(tuple(categorical or ()), tuple(quantitative or ()), method, alpha, bins, layers,
                              weight=weight, seed=int(seed))
            pipeline = squash_to_arrow
        cur = owner.cursor()
        try:
            try:
                data, _ = pipeline(cur, src, spec)
            except SourceNotFoundError as e:
                raise SourceNotFoundError(
                    f"{e} (squash() in SQL reads committed data through a separate cursor: "
                    "TEMP tables and uncommitted rows are not visible to it)") from None
            path = os.path.join(folder, f"{uuid.uuid4().hex}.parquet")
            write_file(cur, data, path, replace=False)
            return path
        finally:
            cur.close()

    names = duckdb.list_type(VARCHAR)
    con.create_function(_UDF, run, [VARCHAR, names, names, VARCHAR, DOUBLE, VARCHAR, BIGINT, INTEGER, INTEGER,
                                    VARCHAR, VARCHAR, BIGINT, INTEGER, VARCHAR, VARCHAR, BOOLEAN], VARCHAR)
    con.execute(_macro_sql().replace("{udf}", _UDF))
    udfs = [_UDF, install_views(con, owner_ref)]

    def cleanup(ref=owner_ref) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        owner = ref()
        if owner is not None:
            try:
                for udf in udfs:
                    owner.remove_function(udf)
            except Exception:  # connection already closed
                pass

    atexit.register(cleanup)
    return con


def connect(database: str = ":memory:", **kwargs) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(database, **kwargs)`` with :func:`install` applied."""
    return install(duckdb.connect(database, **kwargs))
