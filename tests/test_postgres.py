"""The partial moment SQL runs unchanged (dialect="postgres") on PostgreSQL and gives DuckDB's integers.

Needs PostgreSQL server binaries and a ``postgres`` system user (we run as root here); skipped otherwise.
"""
from __future__ import annotations

import csv
import glob
import io
import os
import shutil
import subprocess
import tempfile

import duckdb
import numpy as np
import pytest

import duckquash

from .conftest import paper_like

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(not PG_BIN or os.geteuid() != 0 or shutil.which("su") is None,
                                reason="needs PostgreSQL binaries and root (to run them as user postgres)")


@pytest.fixture(scope="module")
def pg():
    base = tempfile.mkdtemp(prefix="duckquash-pg-")  # under /tmp: reachable by the postgres user
    os.chmod(base, 0o777)
    data, port, bin_ = os.path.join(base, "data"), "54331", PG_BIN[-1]
    start = (f"{bin_}/initdb -D {data} -A trust -U postgres >/dev/null && {bin_}/pg_ctl -D {data} "
             f"-o \"-k {base} -p {port} -c listen_addresses=''\" -l {base}/log -w start >/dev/null")
    if subprocess.run(["su", "postgres", "-c", start]).returncode != 0:
        pytest.skip("could not start a PostgreSQL server")

    def psql(sql: str, stdin: str | None = None) -> list[dict]:
        out = subprocess.run([f"{bin_}/psql", "-h", base, "-p", port, "-U", "postgres", "-X", "-q", "--csv",
                              "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, input=stdin)
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        return list(csv.DictReader(io.StringIO(out.stdout)))

    yield psql
    subprocess.run(["su", "postgres", "-c", f"{bin_}/pg_ctl -D {data} -m immediate stop >/dev/null"])
    shutil.rmtree(base, ignore_errors=True)


def test_moment_sql_on_postgres_equals_duckdb(pg, tmp_path):
    df = paper_like(3000, seed=11)[["a1", "defected", "x1", "x2", "x3"]]
    df.loc[::97, "x2"] = np.nan  # NULLs form their own regions on both engines
    con = duckdb.connect()
    con.register("d", df)
    con.execute("CREATE TABLE t AS SELECT * FROM d")
    path = str(tmp_path / "t.csv")
    con.execute(f"COPY t TO '{path}' (HEADER, NULLSTR '')")
    pg("CREATE TABLE t (a1 BIGINT, defected BIGINT, x1 DOUBLE PRECISION, x2 DOUBLE PRECISION, x3 DOUBLE PRECISION)")
    with open(path) as f:
        pg("COPY t FROM STDIN (FORMAT csv, HEADER, NULL '')", stdin=f.read())
    plan = duckquash.squash_plan(con, "t", categorical=["a1", "defected"], quantitative=["x1", "x2", "x3"],
                                 method="hyprect")
    ours = con.sql(plan.moment_sql("t", rows=False)).fetchall()
    names = [c[0] for c in con.sql(plan.moment_sql("t", rows=False)).description]
    theirs = pg(plan.moment_sql("t", dialect="postgres"))
    assert len(theirs) == len(ours) > 10

    def parse(v: str, name: str):
        if v == "":
            return None
        return float(v) if name.startswith(("__dq_min_", "__dq_max_")) else int(v)

    key = lambda r: tuple((v is None, v) for v in r[:5])  # noqa: E731
    got = sorted((tuple(parse(row[n], n) for n in names) for row in theirs), key=key)
    assert got == sorted(ours, key=key)  # integer sums, counts, min/max: identical
    # and the partial tables merge into the same squash whichever engine computed them
    assert plan.bits() and all(b is not None for b in plan.bits().values())
