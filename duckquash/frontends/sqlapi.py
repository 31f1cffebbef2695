"""SQL entry point: ``CALL squash(...)`` / ``FROM squash(...)`` on a connection.

DuckDB's Python API offers scalar UDFs only, so a TEMP table macro (text in ``sql/squash.sql``)
calls a Python UDF that runs the pipeline on ``con.cursor()`` and writes the rows to a Parquet
file; the macro returns ``read_parquet`` of it. A table created by the cursor would not be
visible to the calling statement (it runs in its own transaction); a file is.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import uuid
import weakref
from importlib import resources

import duckdb
from duckdb.sqltypes import BIGINT, BOOLEAN, DOUBLE, INTEGER, VARCHAR

from ..api import make_spec, squash_to_arrow
from ..errors import InputError, SourceNotFoundError
from ..io.write import write_file
from ..views.refresh import refresh

_UDF = "__dq_squash_file"


def _macro_sql() -> str:
    """The macro text from the top-level ``sql/`` folder (installed as ``duckquash.macros``)."""
    return resources.files("duckquash.macros").joinpath("squash.sql").read_text(encoding="utf-8")


_REFRESH_UDF = "__dq_refresh_view"


def _install_refresh(con: duckdb.DuckDBPyConnection, owner_ref) -> str:
    """Register ``squash_refresh(name, src, batch_id := NULL, rebin := false)`` on ``con``; returns the UDF name.

    The refresh runs on a cursor in its own transaction and is committed when the CALL returns,
    so the caller's next statement sees the new view (the caller must not hold an open
    transaction that touched the view's tables). The UDF is volatile: it runs once per CALL.
    """
    def run(name: str, src: str, batch_id: str | None, rebin: bool | None) -> str:
        owner = owner_ref()
        if owner is None:
            raise RuntimeError("the connection that installed squash_refresh() is closed")
        if name is None or src is None:
            raise InputError("squash_refresh needs a view name and a source of new rows")
        cur = owner.cursor()
        try:
            rep = refresh(cur, name, src, batch_id=batch_id, rebin=bool(rebin))
        finally:
            cur.close()
        return json.dumps({"name": rep.name, "batch_id": rep.batch_id, "n_new_rows": rep.n_new_rows,
                           "n_rows": rep.n_rows, "n_changed_regions": rep.n_changed_regions,
                           "n_points": rep.n_points, "drift": rep.drift, "summary": rep.summary()})

    con.create_function(_REFRESH_UDF, run, [VARCHAR, VARCHAR, VARCHAR, BOOLEAN], VARCHAR,
                        null_handling="special", side_effects=True)
    text = resources.files("duckquash.macros").joinpath("views.sql").read_text(encoding="utf-8")
    con.execute(text.replace("{udf}", _REFRESH_UDF))
    return _REFRESH_UDF


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
        nulls = [k for k, v in (("src", src), ("method", method if method is not None else ""), ("alpha", alpha),
                                 ("weight", weight), ("seed", seed)) if v is None]
        if nulls:
            raise InputError(f"squash(): {', '.join(nulls)} must not be NULL (src: a table, view, file path or one "
                             "SELECT; leave other arguments out for their defaults)")
        if isinstance(method, str) and method.lower() == "lds":
            spec = make_spec("lds", weight=weight, seed=int(seed), formula=formula, size=int(size), family=family,
                             iterations=int(iterations), init=init, profiles=profiles, refine=bool(refine))
        else:
            spec = make_spec(method, categorical=tuple(categorical or ()), quantitative=tuple(quantitative or ()),
                             alpha=alpha, bins=bins, layers=layers, weight=weight, seed=int(seed),
                             size=int(size) if size else None)
        cur = owner.cursor()
        try:
            try:
                data, _ = squash_to_arrow(cur, src, spec)
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
                                    VARCHAR, VARCHAR, BIGINT, INTEGER, VARCHAR, VARCHAR, BOOLEAN], VARCHAR,
                        null_handling="special")
    con.execute(_macro_sql().replace("{udf}", _UDF))
    udfs = [_UDF, _install_refresh(con, owner_ref)]

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
