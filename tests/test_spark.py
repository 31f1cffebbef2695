"""The moment pass on Apache Spark (local mode) gives DuckDB's integers; squash and refresh via Spark equal DuckDB's.

One local Spark session for the module (``local[2]``, 4 shuffle partitions); skipped only when
pyspark or Java is missing, and then only outside CI (``.ci/run`` sets DUCKQUASH_REQUIRE_SPARK=1,
which turns a missing pyspark or Java into a failure).
"""
from __future__ import annotations

import os
import shutil
from decimal import Decimal

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import duckquash

from .conftest import paper_like

REQUIRED = os.environ.get("DUCKQUASH_REQUIRE_SPARK") == "1"  # set by .ci/run: there a skip is a failure
JAVA = shutil.which("java") or (os.environ.get("JAVA_HOME") and os.path.exists(os.path.join(os.environ["JAVA_HOME"], "bin", "java")))
try:
    import pyspark  # noqa: F401
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("needs pyspark (pip install 'duckquash[spark]')", allow_module_level=True)
if not JAVA:
    if REQUIRED:
        raise RuntimeError("tests/test_spark.py needs Java (a JDK/JRE on PATH or JAVA_HOME) to start Spark")
    pytest.skip("needs Java (a JDK/JRE on PATH or JAVA_HOME) to start Spark", allow_module_level=True)

import duckquash.spark  # noqa: E402 - after the skips

CAT, QUANT = ["a1", "grade"], ["x1", "x2", "x3"]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("duckquash-tests")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.default.parallelism", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               # C1 only: short tests, and JIT time dominates them (3.4 s against 7.7 s per moment pass, loaded machine)
               .config("spark.driver.extraJavaOptions", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _rows(n: int, seed: int):
    df = paper_like(n, seed=seed)
    df["grade"] = np.array(["lo", "mid", "hi"])[df["a2"].to_numpy()]  # a string categorical: types round-trip
    df = df[["a1", "grade", "x1", "x2", "x3"]].copy()
    df.loc[::97, "x2"] = np.nan  # NaN -> its own missing-value region on both engines
    df.loc[::211, "grade"] = None  # a NULL categorical value is a level of its own
    return df


@pytest.fixture(scope="module")
def data(spark):
    con = duckdb.connect()
    df = _rows(3000, 11)
    con.register("d", df)
    con.execute("CREATE TABLE t AS SELECT * FROM d")
    con.unregister("d")
    sdf = spark.createDataFrame(con.sql("SELECT * FROM t").to_arrow_table())
    yield con, sdf
    con.close()


def _canon(table) -> list[tuple]:
    """Rows as plain Python values (DECIMAL(38,0) sums as ints), sorted by region key."""
    def plain(v):
        if isinstance(v, Decimal):
            return int(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    rows = [tuple(plain(v) for v in r.values()) for r in table.to_pylist()]
    return sorted(rows, key=lambda r: repr(r))


def test_spark_moment_table_equals_duckdb_over_1_4_16_partitions(spark, data):
    con, sdf = data
    for method in ("adaptive", "hyprect"):
        plan = duckquash.squash_plan(con, "t", categorical=CAT, quantitative=QUANT, method=method)
        ours = con.sql(plan.moment_sql("t")).to_arrow_table()  # with the tiny regions' row lists
        assert ours.num_rows > 20 and "__dq_rows" in ours.column_names
        for k in ((1, 4, 16) if method == "adaptive" else (4,)):
            theirs = duckquash.spark.moments(sdf.repartition(k), plan, con=con)
            assert theirs.column_names == ours.column_names
            assert _canon(theirs) == _canon(ours), (method, k)  # integer sums, counts, min/max, row lists: identical


def test_spark_sql_is_rendered_from_the_one_renderer(data):
    con, _ = data
    plan = duckquash.squash_plan(con, "t", categorical=CAT, quantitative=QUANT)
    sql = plan.moment_sql("`t`", dialect="spark")
    assert "element_at(" in sql.lower() and "DECIMAL(38, 0)" in sql and "RINT(" in sql.upper()
    assert "::" not in sql and '"' not in sql  # Spark syntax throughout
    with pytest.raises(duckquash.InputError, match="Data Sphere|HypRect and adaptive"):
        duckquash.squash_plan(con, "t", categorical=CAT, quantitative=QUANT, method="datasphere").moment_sql(
            "t", dialect="spark")


def test_squash_via_spark_equals_squash_via_duckdb(spark, data, tmp_path):
    con, sdf = data
    res = duckquash.spark.squash(sdf.repartition(4), categorical=CAT, quantitative=QUANT, into=con, table="via_spark")
    plan = res.report.plan
    # the table has fewer rows than the sample size: the Spark sample is DuckDB's sample, so the plan is DuckDB's
    ref_plan = duckquash.squash_plan(con, "t", categorical=CAT, quantitative=QUANT)
    assert plan.to_json() == ref_plan.to_json()
    duckquash.squash_from_moments(con, ref_plan, [con.sql(ref_plan.moment_sql("t"))], into="via_duckdb",
                                        sample="t")
    got = con.sql("SELECT * FROM via_spark").fetchall()
    want = con.sql("SELECT * FROM via_duckdb").fetchall()
    assert len(got) == len(want) == res.n_points and res.n_rows == 3000
    assert got == want  # the same points, weights and order
    # the same plan again, written to Parquet (the Spark sample is skipped; random starts on both sides)
    path = str(tmp_path / "squashed.parquet")
    duckquash.spark.squash(sdf, plan=ref_plan, into=path)
    duckquash.squash_from_moments(con, ref_plan, [con.sql(ref_plan.moment_sql("t"))], into="via_duckdb2")
    assert pq.read_table(path).to_pylist() == con.sql("SELECT * FROM via_duckdb2").to_arrow_table().to_pylist()


def test_refresh_with_rows_on_spark_equals_refresh_with_rows_in_duckdb(spark, data):
    con, _ = data
    con.execute("CREATE TABLE first_rows AS SELECT * FROM t LIMIT 2000 OFFSET 0")
    new = _rows(800, 12)
    con.register("n", new)
    con.execute("CREATE TABLE new_rows AS SELECT * FROM n")
    con.unregister("n")
    for name in ("v_duck", "v_spark"):
        duckquash.materialize(con, name, "first_rows", categorical=CAT, quantitative=QUANT)
    a = duckquash.refresh(con, "v_duck", "new_rows", batch_id="b1")
    new_sdf = spark.createDataFrame(con.sql("SELECT * FROM new_rows").to_arrow_table()).repartition(3)
    b = duckquash.spark.refresh(con, "v_spark", new_sdf, batch_id="b1")
    assert (a.n_new_rows, a.n_rows, a.n_changed_regions, a.n_new_regions, a.n_points) == \
           (b.n_new_rows, b.n_rows, b.n_changed_regions, b.n_new_regions, b.n_points)
    for sib in ("__moments", "__points"):
        assert con.sql(f"SELECT * FROM v_duck{sib} ORDER BY ALL").fetchall() == \
               con.sql(f"SELECT * FROM v_spark{sib} ORDER BY ALL").fetchall(), sib
    fp = con.sql("SELECT fingerprint FROM v_spark__batches ORDER BY seq DESC LIMIT 1").fetchall()[0][0]
    assert fp.startswith("spark:800:")
    with pytest.raises(duckquash.InputError, match="already folded"):  # the same content again, from Spark
        duckquash.spark.refresh(con, "v_spark", new_sdf, batch_id="b2")
