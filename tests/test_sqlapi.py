"""SQL entry point: CALL / FROM squash(...), transactions, file databases, readable errors."""
import duckdb
import pytest

import duckquash

ARGS = "categorical := ['a1', 'a2', 'defected'], quantitative := ['x1', 'x2', 'x3']"


@pytest.fixture
def sqlcon(small_df, tmp_path):
    con = duckquash.connect(str(tmp_path / "w.duckdb"))
    con.register("df", small_df)
    con.execute("CREATE TABLE calls AS SELECT * FROM df")
    con.unregister("df")
    yield con
    con.close()


def test_call_and_create_table_as(sqlcon, small_df):
    rows = sqlcon.sql(f"CALL squash('calls', {ARGS}, method := 'hyprect', alpha := 1.0)").fetchall()
    assert 0 < len(rows) < len(small_df)
    assert sum(r[-1] for r in rows) == pytest.approx(len(small_df))
    sqlcon.execute(f"CREATE TABLE calls_sq AS FROM squash('calls', {ARGS}, method := 'hyprect')")
    n, w = sqlcon.execute("SELECT count(*), sum(weight) FROM calls_sq").fetchall()[0]
    assert n == len(rows) and w == pytest.approx(len(small_df))


def test_same_rows_as_python_api(sqlcon):
    py = duckquash.squash(sqlcon, "calls", categorical=["a1", "a2", "defected"], quantitative=["x1", "x2", "x3"],
                          into="py").relation.order("ALL").fetchall()
    sql = sqlcon.sql(f"SELECT * FROM squash('calls', {ARGS}) ORDER BY ALL").fetchall()
    assert sql == py


def test_repeated_calls_and_transactions_see_fresh_results(sqlcon, small_df):
    n = len(small_df)
    q = "SELECT sum(weight) FROM squash('calls', categorical := ['a1'], quantitative := ['x1'])"
    assert sqlcon.execute(q).fetchall()[0][0] == pytest.approx(n)
    sqlcon.execute("INSERT INTO calls SELECT * FROM calls LIMIT 100")
    assert sqlcon.execute(q).fetchall()[0][0] == pytest.approx(n + 100)
    sqlcon.execute("BEGIN TRANSACTION")
    assert sqlcon.execute(q).fetchall()[0][0] == pytest.approx(n + 100)
    sqlcon.execute(f"CREATE TABLE inside AS FROM squash('calls', {ARGS})")
    sqlcon.execute("COMMIT")
    assert sqlcon.execute("SELECT sum(weight) FROM inside").fetchall()[0][0] == pytest.approx(n + 100)
    sqlcon.execute("BEGIN TRANSACTION")
    sqlcon.execute(f"CREATE TABLE rolled AS FROM squash('calls', {ARGS})")
    sqlcon.execute("ROLLBACK")
    assert sqlcon.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'rolled'").fetchall()[0][0] == 0


def test_errors_reach_sql_readably(sqlcon):
    with pytest.raises(duckdb.Error, match="unknown column"):
        sqlcon.execute("CALL squash('calls', categorical := ['nope'])").fetchall()
    with pytest.raises(duckdb.Error, match="alpha must be"):
        sqlcon.execute("CALL squash('calls', categorical := ['a1'], alpha := -2)").fetchall()
    sqlcon.execute("CREATE TEMP TABLE tmp AS SELECT * FROM calls")
    with pytest.raises(duckdb.Error, match="TEMP tables"):
        sqlcon.execute("CALL squash('tmp', categorical := ['a1'])").fetchall()


def test_files_and_queries_as_sql_sources(sqlcon, tmp_path, small_df):
    path = str(tmp_path / "c.parquet")
    sqlcon.execute(f"COPY calls TO '{path}' (FORMAT PARQUET)")
    got = sqlcon.execute(f"SELECT sum(weight) FROM squash('{path}', categorical := ['a1'], quantitative := ['x1'])").fetchall()
    assert got[0][0] == pytest.approx(len(small_df))
    got = sqlcon.execute("SELECT sum(weight) FROM squash('SELECT * FROM calls WHERE a1 = 0', "
                         "categorical := ['a2'], quantitative := ['x1'])").fetchall()
    assert got[0][0] == pytest.approx((small_df.a1 == 0).sum())
