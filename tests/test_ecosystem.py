"""Issue 15, items 1-3, 8 and 9: Python data objects as sources, file outputs and TEMP defaults,
labelled results, small truths (LDS layout, evaluate's messages, public examples), OSMAC's pilot."""
from __future__ import annotations

import ast
import os
import pathlib
import warnings

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

import duckquash
from duckquash import InputError, OutputExistsError, SourceNotFoundError

from .conftest import paper_like

ARGS = dict(categorical=["a1", "defected"], quantitative=["x1", "x2", "x3"])
FORMULA = "defected ~ C(a1) + x1 + x2 + x3"
SECRET = "s3cr3t-row-value"  # a value of the data that no message may print


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    d = paper_like(4_000, seed=21)[["a1", "x1", "x2", "x3", "defected"]]
    d["note"] = SECRET
    return d


@pytest.fixture
def tcon(df):
    """A connection with the same rows as table ``t`` (the reference for every object source)."""
    c = duckdb.connect()
    c.register("d_view", df)
    c.execute("CREATE TABLE t AS SELECT * FROM d_view")
    c.unregister("d_view")
    yield c
    c.close()


def _objects(df, con) -> dict:
    tab = pa.Table.from_pandas(df, preserve_index=False)
    out = {"pandas": lambda: df, "arrow table": lambda: tab,
           "record batch": lambda: tab.combine_chunks().to_batches()[0],
           "reader": lambda: pa.RecordBatchReader.from_batches(tab.schema, tab.to_batches(max_chunksize=700)),
           "dataset": lambda: pads.dataset(tab), "relation": lambda: con.sql("SELECT * FROM t")}
    try:
        import polars as pl

        out["polars"] = lambda: pl.from_pandas(df)
        out["polars lazy"] = lambda: pl.from_pandas(df).lazy()
    except ImportError:  # polars is optional: its cases run where it is installed
        pass
    return out


def _leftovers(con) -> list[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE starts_with(table_name, '__dq_') "
                       "UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal "
                       "AND starts_with(view_name, '__dq_')").fetchall()
    return [r[0] for r in rows if not r[0].startswith(("__dq_cells_", "__dq_nodes_"))]


# ---------------------------------------------------------------- 1. Python objects as sources


def test_every_object_kind_squashes_fits_and_samples_like_the_table(tcon, df):
    ref = duckquash.squash(tcon, "t", **ARGS, into="ref").relation.fetchall()
    ref_fit = duckquash.glm(tcon, "t", FORMULA, "binomial").params
    ref_sample = duckquash.sample(tcon, "t", 300, seed=3, into="ref_s").relation.fetchall()
    for kind, make in _objects(df, tcon).items():
        sq = duckquash.squash(tcon, make(), **ARGS)
        assert sq.relation.fetchall() == ref, kind  # same rows, same squash: the object is read as the table
        assert sq.n_rows == len(df)
        np.testing.assert_allclose(duckquash.glm(tcon, make(), FORMULA, "binomial").params, ref_fit, rtol=1e-9)
        if kind in ("pandas", "reader", "polars"):
            assert duckquash.sample(tcon, make(), 300, seed=3).relation.fetchall() == ref_sample, kind
        assert _leftovers(tcon) == [], kind
    osm = duckquash.sample(tcon, _objects(df, tcon)["reader"](), 400, method="osmac", formula=FORMULA, seed=1)
    assert osm.n_rows == len(df)  # OSMAC reads its source three times: the reader's TEMP copy
    assert _leftovers(tcon) == []


def test_objects_in_evaluate_materialize_and_refresh(tcon, df):
    objs = _objects(df, tcon)
    sq = duckquash.squash(tcon, objs["pandas"](), **ARGS, into="sq")
    red = {"squash": sq, "arrow": duckquash.sample(tcon, "t", 500, seed=2).relation.to_arrow_table()}
    ev = duckquash.evaluate(tcon, objs["reader"](), red, FORMULA)  # the full data read once, used twice
    ref = duckquash.evaluate(tcon, "t", {"squash": "sq", "arrow": red["arrow"]}, FORMULA)
    assert ev.table.column("mse").to_pylist() == pytest.approx(ref.table.column("mse").to_pylist(), rel=1e-9)
    assert ev.table.column("resid_sd_1e4").to_pylist() == pytest.approx(
        ref.table.column("resid_sd_1e4").to_pylist(), rel=1e-6)
    first, rest = df.iloc[:3000], df.iloc[3000:]
    v = duckquash.materialize(tcon, "v", first, **ARGS)
    assert v.n_rows == 3000
    rep = duckquash.refresh(tcon, "v", pa.Table.from_pandas(rest, preserve_index=False))
    assert rep.n_rows == len(df)
    whole = duckquash.materialize(tcon, "w", objs["dataset"](), **ARGS)
    assert whole.n_rows == len(df)
    assert _leftovers(tcon) == []


def test_record_batch_reader_is_read_once_into_a_temp_table(tcon, df):
    tab = pa.Table.from_pandas(df, preserve_index=False)
    reader = pa.RecordBatchReader.from_batches(tab.schema, tab.to_batches(max_chunksize=500))
    sq = duckquash.squash(tcon, reader, **ARGS)  # sample pass, then moment pass: both see every row
    assert sq.n_rows == len(df)
    assert _leftovers(tcon) == []  # the TEMP copy is dropped
    with pytest.raises(InputError, match="read only once") as e:
        duckquash.glm(tcon, reader, FORMULA, "binomial")
    assert SECRET not in str(e.value)
    with pytest.raises(InputError, match="read only once"):
        sq.verify()  # the squash's own source is gone; verify(source) takes the rows again
    assert sq.verify(tab).ok
    # a reader of a query on the same connection holds its open result (DuckDB's ResourceInUse): read first
    same = tcon.sql("SELECT * FROM t").arrow()
    if isinstance(same, pa.RecordBatchReader):
        assert duckquash.squash(tcon, same, **ARGS).relation.fetchall() == sq.relation.fetchall()


def test_errors_name_the_object_never_its_data(tcon, df):
    with pytest.raises(InputError) as e:
        duckquash.squash(tcon, df, categorical=["nope"], quantitative=["x1"])
    assert "nope" in str(e.value) and "pandas DataFrame" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(InputError) as e:
        duckquash.glm(tcon, df["x1"], "x1 ~ 1")  # a Series is not a source
    assert "pandas.Series" in str(e.value) and len(str(e.value)) < 400
    with pytest.raises(InputError) as e:
        duckquash.squash(tcon, df, categorical=["note"], quantitative=["a1"])  # fine: note is categorical
        duckquash.squash(tcon, df, categorical=["a1"], quantitative=["note"])
    assert "numeric" in str(e.value) and SECRET not in str(e.value)


def test_python_variable_names_are_not_looked_up(tcon, df):
    """DuckDB's replacement scans would find a local ``df`` named in a string; duckquash does not
    use them (a string is a table name, a path or one SELECT) and says how to pass the object."""
    my_frame = df  # noqa: F841 - the variable the strings below name
    with pytest.raises(SourceNotFoundError, match=r"'my_frame' is a pandas DataFrame.*pass the object itself"):
        duckquash.squash(tcon, "my_frame", **ARGS)
    with pytest.raises(InputError, match=r"'my_frame' is a pandas DataFrame.*pass the object itself"):
        duckquash.glm(tcon, "SELECT * FROM my_frame", FORMULA, "binomial")
    with pytest.raises(SourceNotFoundError) as e:
        duckquash.squash(tcon, "no_such_thing", **ARGS)
    assert "pass the object" not in str(e.value)


def test_table_function_text_is_one_read_only_select(tcon, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(2):
        tcon.execute(f"COPY (SELECT * FROM t WHERE a1 % 2 = {k}) TO '{parts}/p{k}.parquet' (FORMAT PARQUET)")
    text = f"read_parquet('{parts}/*.parquet')"
    res = duckquash.squash(tcon, text, **ARGS)
    assert res.n_rows == 4000
    assert duckquash.glm(tcon, text, FORMULA, "binomial").nobs == 4000
    tcon.execute("CREATE TABLE victim AS SELECT 1 AS v")
    for bad in (f"{text}; DROP TABLE victim", f"{text}) ; DROP TABLE victim; SELECT (1",
                "query('DROP TABLE victim')"):
        with pytest.raises((InputError, SourceNotFoundError)):
            duckquash.squash(tcon, bad, **ARGS)
    assert tcon.execute("SELECT count(*) FROM victim").fetchall() == [(1,)]


# ---------------------------------------------------------------- 2. outputs where users want them


@pytest.mark.parametrize("ext", [".parquet", ".csv"])
def test_into_a_file_writes_it_atomically(tcon, tmp_path, ext):
    out = tmp_path / f"out{ext}"
    res = duckquash.squash(tcon, "t", **ARGS, into=str(out))
    assert out.exists() and res.path == str(out) and "file" in res.summary()
    reader = "read_parquet" if ext == ".parquet" else "read_csv"
    assert tcon.execute(f"SELECT count(*), sum(weight) FROM {reader}('{out}')").fetchall()[0] == \
        (res.n_points, pytest.approx(4000))
    assert not tcon.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'out%'").fetchall()[0][0]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".duckquash-")]
    assert duckquash.glm(tcon, str(out), FORMULA, "binomial").weight == "weight"
    assert res.verify().ok
    with pytest.raises(OutputExistsError):
        duckquash.squash(tcon, "t", **ARGS, into=str(out))
    duckquash.squash(tcon, "t", **ARGS, into=out, replace=True)  # a PathLike is a file too
    s = duckquash.sample(tcon, "t", 100, into=str(tmp_path / f"s{ext}"))
    assert s.relation.count("*").fetchall() == [(100,)]
    ev = duckquash.evaluate(tcon, "t", {"file": res, "sample": s}, FORMULA)
    assert ev.table.num_rows == 2
    with pytest.raises(InputError, match="input file itself"):
        duckquash.squash(tcon, str(out), **ARGS, into=str(out), replace=True)
    with pytest.raises(InputError, match="folder"):
        duckquash.squash(tcon, "t", **ARGS, into=str(tmp_path / "missing" / f"o{ext}"))
    res = duckquash.squash(tcon, "t", **ARGS, into='"named.csv"')  # quoted: a table with a dot in its name
    assert res.path is None and tcon.execute('SELECT count(*) FROM "named.csv"').fetchall()[0][0] == res.n_points


def test_without_into_nothing_accumulates_in_a_database_file(tmp_path, df):
    db = str(tmp_path / "f.duckdb")
    con = duckdb.connect(db)
    con.register("d_view", df)
    con.execute("CREATE TABLE t AS SELECT * FROM d_view")
    con.unregister("d_view")
    sq = duckquash.squash(con, "t", **ARGS)
    sm = duckquash.sample(con, "t", 50)
    lds = duckquash.squash(con, "t", method="lds", formula=FORMULA, family="binomial", size=60)
    for r in (sq, sm, lds):
        assert r.table.startswith("temp.")
        assert con.execute(f"SELECT count(*) FROM {r.table}").fetchall()[0][0] == r.n_points
    assert duckquash.glm(con, sq.table, FORMULA, "binomial").weight == "weight"
    assert duckquash.evaluate(con, "t", {"sq": sq.table, "s": sm}, FORMULA).table.num_rows == 2
    con.close()
    con = duckdb.connect(db)
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["t"]
    con.close()
    ro = duckdb.connect(db, read_only=True)  # a TEMP output needs no write access to the file
    assert duckquash.squash(ro, "t", **ARGS).n_rows == len(df)
    ro.close()


# ---------------------------------------------------------------- 3. labelled results


def test_results_are_labelled_as_statsmodels_formula_models(tcon, df):
    smf = pytest.importorskip("statsmodels.formula.api")
    res = duckquash.glm(tcon, df, FORMULA, "binomial")
    ref = smf.glm(FORMULA, df, family=__import__("statsmodels.api").api.families.Binomial()).fit()
    names = ["Intercept", "C(a1)[T.1]", "C(a1)[T.2]", "x1", "x2", "x3"]
    for attr in ("params", "bse", "tvalues", "pvalues"):
        got, want = getattr(res, attr), getattr(ref, attr)
        assert isinstance(got, pd.Series) and list(got.index) == names == list(want.index), attr
        pd.testing.assert_series_equal(got, want, rtol=1e-5, atol=1e-6, check_names=False)
    assert res.params["x1"] == pytest.approx(ref.params["x1"], rel=1e-8)
    ci, cov = res.conf_int(), res.cov_params()
    assert isinstance(ci, pd.DataFrame) and list(ci.index) == names and list(ci.columns) == [0, 1]
    pd.testing.assert_frame_equal(ci, ref.conf_int(), rtol=1e-6, atol=1e-6)
    assert list(cov.index) == list(cov.columns) == names
    pd.testing.assert_frame_equal(cov, ref.cov_params(), rtol=1e-5, atol=1e-9)
    # array access stays cheap: no copy, and arithmetic between fits aligns by term
    a = res.params.to_numpy()
    assert isinstance(a, np.ndarray) and np.shares_memory(a, res.params.to_numpy())
    z = (duckquash.glm(tcon, df.iloc[:2000], FORMULA, "binomial").params - res.params) / res.bse
    assert list(z.index) == names and np.isfinite(z).all()
    assert "x1" in res.summary() and "C(a1)[T.2]" in res.summary()


# ---------------------------------------------------------------- 8. small truths


def test_lds_keeps_the_response_type_and_the_input_column_order(tcon):
    tcon.execute("CREATE TABLE b AS SELECT x3, (defected = 1) AS defected, x1, a1::SMALLINT AS a1, x2 FROM t")
    out = duckquash.squash(tcon, "b", method="lds", formula="defected ~ C(a1) + x1 + x2", family="binomial",
                           size=80, into="lb")
    types = dict(tcon.execute("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_name = 'lb' ORDER BY ordinal_position").fetchall())
    assert list(types) == ["defected", "x1", "a1", "x2", "weight"]  # input order, the weight last
    assert types["defected"] == "BOOLEAN" and types["a1"] == "SMALLINT"
    out = duckquash.squash(tcon, "t", method="lds", formula="defected ~ C(a1) + x1", family="binomial", size=60)
    assert out.relation.types[[c for c in out.relation.columns].index("defected")] == "BIGINT"
    # a Gaussian response's pseudo-points are cluster means: it stays DOUBLE
    tcon.execute("CREATE TABLE g AS SELECT a1, x2, (x1 * 10)::INTEGER AS yi FROM t")
    out = duckquash.squash(tcon, "g", method="lds", formula="yi ~ C(a1) + x2", family="gaussian", size=60)
    assert out.relation.columns == ["a1", "x2", "yi", "weight"]


def test_evaluate_names_a_missing_column(tcon):
    tcon.execute("CREATE TABLE red AS SELECT a1, x1, x2, defected, 2.0 AS weight FROM t USING SAMPLE 50%")
    with pytest.raises(InputError, match=r"'red'.*no column.*\['x3'\]"):
        duckquash.evaluate(tcon, "t", {"red": "red"}, FORMULA)
    tcon.execute("CREATE TABLE short AS SELECT a1, x1, x2, defected FROM t")
    with pytest.raises(InputError, match=r"x3") as e:
        duckquash.evaluate(tcon, "short", {"red": "red"}, FORMULA)
    assert "Binder" not in type(e.value).__name__


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_examples_use_only_public_names(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    public = set(duckquash.__all__)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("duckquash"):
            assert node.module == "duckquash", f"{path.name}:{node.lineno} imports from {node.module}"
            assert {a.name for a in node.names} <= public, f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Import):
            assert all(a.name == "duckquash" or not a.name.startswith("duckquash") for a in node.names)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "duckquash":
            assert node.attr in public, f"{path.name}:{node.lineno} uses duckquash.{node.attr}"


# ---------------------------------------------------------------- 9. OSMAC's pilot


@pytest.fixture(scope="module")
def rare():
    """30k rows; a3 has a level with 1.5% of the rows: a 200-row case-control pilot (the old default)
    holds it about 3 times, so its estimate, the scores of that level's rows and their
    inverse-probability weights go wild."""
    d = paper_like(30_000, seed=4)[["a1", "x1", "x2", "defected"]]
    rng = np.random.default_rng(9)
    d["a3"] = rng.choice(4, len(d), p=[0.6, 0.3, 0.085, 0.015])
    con = duckdb.connect()
    con.register("d_view", d)
    con.execute("CREATE TABLE r AS SELECT * FROM d_view")
    con.unregister("d_view")
    yield con
    con.close()


def test_osmac_default_pilot_is_large_enough_for_a_rare_level(rare):
    formula = "defected ~ C(a1) + C(a3) + x1 + x2"
    kw = dict(method="osmac", criterion="mvc", formula=formula, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", duckquash.DuckquashWarning)
        got = duckquash.sample(rare, "r", 6000, **kw)  # the default pilot: no warning here
    assert got.pilot.n_rows == 1000  # max(1000, 20 p) rows, at most n / 4
    with pytest.warns(duckquash.DuckquashWarning, match=r"fewer than 10 rows of C\(a3\)\[T.3\].*pilot="):
        small = duckquash.sample(rare, "r", 6000, **kw, pilot=200)
    red = {"uniform": duckquash.sample(rare, "r", 6000, seed=0), "osmac": got, "osmac pilot 200": small}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = duckquash.evaluate(rare, "r", red, formula)
    mse = dict(zip(ev.table.column("method").to_pylist(), ev.table.column("mse").to_pylist()))
    print(f"\nMSE at n = 6000 of 30,000: {mse}")
    assert mse["osmac"] < mse["uniform"]  # measured 4.8 against 6.8
    assert mse["osmac pilot 200"] > 10 * mse["uniform"]  # measured 134: the failure the warning names
