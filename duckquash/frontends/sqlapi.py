"""SQL entry point: ``CALL squash(...)`` / ``FROM squash(...)`` on a connection.

DuckDB's Python API offers scalar UDFs only, so a TEMP table macro (text in ``sql/squash.sql``)
calls a Python UDF that runs the pipeline on ``con.cursor()`` and writes the rows to a Parquet
file; the macro returns ``read_parquet`` of it. A table created by the cursor would not be
visible to the calling statement (it runs in its own transaction); a file is.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from importlib import resources

import duckdb
from duckdb.sqltypes import BIGINT, BOOLEAN, DOUBLE, INTEGER, VARCHAR

from ..api import make_spec, squash_to_arrow
from ..errors import InputError, SourceNotFoundError
from ..io.write import write_file
from ..views.refresh import refresh

_UDF = "__dq_squash_file"


def _macro_sql(name: str) -> str:
    """A macro's text from the top-level ``sql/`` folder (installed as ``duckquash.macros``)."""
    return resources.files("duckquash.macros").joinpath(name).read_text(encoding="utf-8")


_REFRESH_UDF = "__dq_refresh_view"


def _install_refresh(con: duckdb.DuckDBPyConnection, state: "_Installed") -> str:
    """Register ``squash_refresh(name, src, batch_id := NULL, rebin := false)`` on ``con``; returns the UDF name.

    The refresh runs on a cursor in its own transaction and is committed when the CALL returns,
    so the caller's next statement sees the new view (the caller must not hold an open
    transaction that touched the view's tables). The UDF is volatile: it runs once per CALL.
    """
    def run(name: str, src: str, batch_id: str | None, rebin: bool | None) -> str:
        owner = state.owner()
        if name is None or src is None:
            raise InputError("squash_refresh needs a view name and a source of new rows")
        cur = _plain_cursor(owner)
        try:
            rep = refresh(cur, name, src, batch_id=batch_id, rebin=bool(rebin))
        finally:
            cur.close()
        return json.dumps({"name": rep.name, "batch_id": rep.batch_id, "n_new_rows": rep.n_new_rows,
                           "n_rows": rep.n_rows, "n_changed_regions": rep.n_changed_regions,
                           "n_points": rep.n_points, "drift": rep.drift, "summary": rep.summary()})

    con.create_function(_REFRESH_UDF, run, [VARCHAR, VARCHAR, VARCHAR, BOOLEAN], VARCHAR,
                        null_handling="special", side_effects=True)
    return _REFRESH_UDF


@dataclass
class _Installed:
    """What ``install`` set up on one connection: the folder of its SQL results and the last ones."""

    folder: str
    owners: list = field(default_factory=list)  # weak references to the connections and cursors installed
    # calling thread -> (its current statement's transaction id, its result files); see new_result
    files: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def owner(self) -> duckdb.DuckDBPyConnection:
        """A live installed connection to run the pipeline on (through a cursor of its own)."""
        for ref in self.owners:
            con = ref()
            if con is not None:
                return con
        raise RuntimeError("every connection that installed squash() is closed")

    def new_result(self, txid: int) -> str:
        """A path for the next result file. A thread's statements run one after another, and the
        function runs in the calling thread, so when a thread starts a new statement (a new
        transaction id) its earlier result files have been read and are removed; other threads'
        files are left to them (or removed once their thread has ended). Two squash() calls in one
        statement share its id. Closing the connection removes the folder."""
        path = os.path.join(self.folder, f"{uuid.uuid4().hex}.parquet")
        me = threading.get_ident()
        alive = {t.ident for t in threading.enumerate()}
        with self.lock:
            for key in [k for k, (t, _) in self.files.items() if (k == me and t != txid) or k not in alive]:
                for p in self.files.pop(key)[1]:
                    with contextlib.suppress(OSError):
                        os.unlink(p)
            self.files.setdefault(me, (txid, []))[1].append(path)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_INSTALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ORIGINAL: dict[str, object] = {}


def _plain_cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor without installing anything on it (the pipeline's own work)."""
    return _ORIGINAL.get("cursor", duckdb.DuckDBPyConnection.cursor)(con)


def _patch_connections() -> None:
    """Once per process: cursors of an installed connection are installed too (so ``CALL squash``
    works on every cursor and thread), and closing an installed connection removes its files."""
    if _ORIGINAL:
        return
    _ORIGINAL["cursor"], _ORIGINAL["close"] = duckdb.DuckDBPyConnection.cursor, duckdb.DuckDBPyConnection.close

    def cursor(self, *args, **kwargs):
        cur = _ORIGINAL["cursor"](self, *args, **kwargs)
        return install(cur, _shared=_INSTALLED[self][0]) if self in _INSTALLED else cur

    def close(self, *args, **kwargs):
        done = _INSTALLED.pop(self, None)
        try:
            return _ORIGINAL["close"](self, *args, **kwargs)
        finally:
            if done is not None and done[1]:  # the connection that made the folder removes it
                done[0].remove()

    duckdb.DuckDBPyConnection.cursor, duckdb.DuckDBPyConnection.close = cursor, close
    atexit.register(lambda: [state.remove() for state, _ in list(_INSTALLED.values())])


def install(con: duckdb.DuckDBPyConnection, *, _shared: _Installed | None = None) -> duckdb.DuckDBPyConnection:
    """Make ``squash(...)`` and ``squash_refresh(...)`` callable from SQL on ``con``; returns ``con``.

    Idempotent; works on cursors, and every cursor later made from an installed connection is
    installed too (DuckDB's Python API registers functions per connection; duckquash wraps
    ``DuckDBPyConnection.cursor`` and ``close`` once to follow them). Inside SQL the pipeline
    reads through a separate cursor: it sees committed tables and views, files and queries, but
    not this connection's TEMP tables or uncommitted rows. Result files live in a private
    temporary folder: a statement's files are removed by the next statement's squash() call, and
    the folder when the connection is closed (or the process exits).
    """
    if con in _INSTALLED:
        return con
    _patch_connections()
    if _shared is not None:  # a cursor of an installed connection: the functions are the database's already
        _shared.owners.append(weakref.ref(con))
        _macros(con)
        _INSTALLED[con] = (_shared, False)
        return con
    state = _Installed(tempfile.mkdtemp(prefix="duckquash-sql-"), [weakref.ref(con)])

    def run(src: str, categorical: list, quantitative: list, method: str, alpha: float, weight: str,
            seed: int, bins: int, layers: int, formula: str | None = None, family: str = "binomial",
            size: int = 0, iterations: int = 1, init: str = "sample", profiles: str = "auto",
            refine: bool = False, points: int = 2, calibrate: bool = True, txid: int = 0) -> str:
        owner = state.owner()
        nulls = [k for k, v in (("src", src), ("method", method if method is not None else ""), ("alpha", alpha),
                                 ("weight", weight), ("seed", seed)) if v is None]
        if nulls:
            raise InputError(f"squash(): {', '.join(nulls)} must not be NULL (src: a table, view, file path or one "
                             "SELECT; leave other arguments out for their defaults)")
        if isinstance(method, str) and method.lower() == "lds":
            spec = make_spec("lds", weight=weight, seed=int(seed), formula=formula, size=int(size), family=family,
                             iterations=int(iterations), init=init, profiles=profiles, refine=bool(refine),
                             points=2 if points is None else int(points),
                             calibrate=True if calibrate is None else bool(calibrate))
        else:
            spec = make_spec(method, categorical=tuple(categorical or ()), quantitative=tuple(quantitative or ()),
                             alpha=alpha, bins=bins, layers=layers, weight=weight, seed=int(seed),
                             size=int(size) if size else None)
        cur = _plain_cursor(owner)
        try:
            try:
                data, _ = squash_to_arrow(cur, src, spec)
            except SourceNotFoundError as e:
                raise SourceNotFoundError(
                    f"{e} (squash() in SQL reads committed data through a separate cursor: "
                    "TEMP tables and uncommitted rows are not visible to it)") from None
            path = state.new_result(int(txid or 0))
            write_file(cur, data, path, replace=False)
            return path
        finally:
            cur.close()

    names = duckdb.list_type(VARCHAR)
    for udf in (_UDF, _REFRESH_UDF):  # another connection to this database may have left them: replace
        with contextlib.suppress(duckdb.Error):
            con.remove_function(udf)
    con.create_function(_UDF, run, [VARCHAR, names, names, VARCHAR, DOUBLE, VARCHAR, BIGINT, INTEGER, INTEGER,
                                    VARCHAR, VARCHAR, BIGINT, INTEGER, VARCHAR, VARCHAR, BOOLEAN, INTEGER, BOOLEAN,
                                    BIGINT], VARCHAR, null_handling="special")
    _install_refresh(con, state)
    _macros(con)
    _INSTALLED[con] = (state, True)
    return con


def _macros(con: duckdb.DuckDBPyConnection) -> None:
    """The TEMP macros ``squash`` and ``squash_refresh`` (``sql/*.sql``) on ``con``."""
    con.execute(_macro_sql("squash.sql").replace("{udf}", _UDF))
    con.execute(_macro_sql("views.sql").replace("{udf}", _REFRESH_UDF))


def connect(database: str = ":memory:", **kwargs) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(database, **kwargs)`` with :func:`install` applied."""
    return install(duckdb.connect(database, **kwargs))
