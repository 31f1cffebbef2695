"""The Python API end to end: sources, weights, NULLs, determinism, methods, names, writing."""
import math

import numpy as np
import pandas as pd
import pytest

import duckquash

CATS = ["a1", "a2", "defected"]
QUANT = ["x1", "x2", "x3", "x4", "x5"]


def test_result_fields_and_weights_sum_to_n_per_cell(small, small_df):
    sq = duckquash.squash(small, "small", categorical=CATS, quantitative=QUANT, into="sq")
    assert sq.table == "sq" and sq.n_rows == len(small_df)
    out = sq.relation.df()
    assert len(out) == sq.n_points < sq.n_rows
    assert sq.n_regions == sq.report.regions.num_rows
    assert out.weight.min() > 0
    assert math.isclose(out.weight.sum(), len(small_df), rel_tol=1e-12)
    want = small_df.groupby(CATS).size()
    got = out.groupby(CATS).weight.sum()
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-12)
    assert set(sq.report.timings) == {"group", "momentize", "generate", "write"}
    assert "reduction" in sq.summary()


def test_points_stay_inside_region_range_and_match_means(small, small_df):
    sq = duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1", "x2"], bins=2, into="sq")
    out = sq.relation.df()
    for a1, grp in small_df.groupby("a1"):
        pts = out[out.a1 == a1]
        assert pts.x1.min() >= grp.x1.min() and pts.x1.max() <= grp.x1.max()
        for c in ("x1", "x2"):  # weighted means and variances per cell are exact
            m = np.average(pts[c], weights=pts.weight)
            assert m == pytest.approx(grp[c].mean(), rel=1e-9)
            assert np.average((pts[c] - m) ** 2, weights=pts.weight) == pytest.approx(grp[c].var(ddof=0), rel=1e-7)


@pytest.mark.parametrize("kind", ["parquet", "csv", "relation", "select", "view", "temp"])
def test_sources(con, small_df, tmp_path, kind):
    con.register("df", small_df)
    if kind == "parquet":
        source = str(tmp_path / "d.parquet")
        con.execute(f"COPY df TO '{source}' (FORMAT PARQUET)")
    elif kind == "csv":
        source = str(tmp_path / "d.csv")
        con.execute(f"COPY df TO '{source}' (HEADER)")
    elif kind == "relation":
        source = con.sql("SELECT * FROM df WHERE x1 > 0")
    elif kind == "select":
        source = "SELECT * FROM df"
    elif kind == "view":
        con.execute("CREATE VIEW v AS SELECT * FROM df")
        source = "v"
    else:
        con.execute("CREATE TEMP TABLE tt AS SELECT * FROM df")
        source = "tt"
    sq = duckquash.squash(con, source, categorical=["a1"], quantitative=["x1", "x2"], into="out")
    assert sq.n_rows == len(small_df)
    assert con.execute("SELECT sum(weight) FROM out").fetchall()[0][0] == pytest.approx(len(small_df))
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not any(t.startswith("__dq_") for t in tables)  # helper views are cleaned up


def test_deterministic(small):
    a = duckquash.squash(small, "small", categorical=CATS, quantitative=QUANT, into="a", seed=5).relation.df()
    b = duckquash.squash(small, "small", categorical=CATS, quantitative=QUANT, into="b", seed=5).relation.df()
    pd.testing.assert_frame_equal(a, b)


def test_nulls_and_nans_form_their_own_regions(con):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"g": rng.choice(["u", "v", None], 3000), "x": rng.normal(size=3000), "y": rng.gamma(2, size=3000)})
    df.loc[::7, "x"] = np.nan
    df.loc[::11, "y"] = None
    con.register("df", df)
    con.execute("CREATE TABLE t AS SELECT g, x, y::DOUBLE AS y FROM df")
    con.execute("UPDATE t SET x = 'NaN'::DOUBLE WHERE x IS NULL AND y > 1")  # some NaN, some NULL
    out = duckquash.squash(con, "t", categorical=["g"], quantitative=["x", "y"], into="o").relation.df()
    assert out.weight.sum() == pytest.approx(3000)
    assert out[out.g.isna()].weight.sum() == pytest.approx(df.g.isna().sum())
    assert out[out.x.isna()].weight.sum() == pytest.approx(df.x.isna().sum())
    assert out[out.y.isna()].weight.sum() == pytest.approx(df.y.isna().sum())
    present = df.x.notna()
    assert np.average(out.x.dropna(), weights=out.weight[out.x.notna()]) == pytest.approx(df.x[present].mean(), abs=1e-9 * df.x.std())


@pytest.mark.parametrize("method", ["hyprect", "datasphere"])
def test_methods_reproduce_weighted_least_squares(small, small_df, method):
    sq = duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1", "x2", "x3"], method=method, into="o")
    out = sq.relation.df()

    def wls(d, w):
        X = np.column_stack([np.ones(len(d)), d.a1 == 1, d.a1 == 2, d.x2, d.x3]).astype(float)
        return np.linalg.solve(X.T @ (X * w[:, None]), X.T @ (d.x1.to_numpy() * w))

    full, red = wls(small_df, np.ones(len(small_df))), wls(out, out.weight.to_numpy())
    np.testing.assert_allclose(red, full, rtol=1e-6)


def test_alpha_zero_gives_region_means(small, small_df):
    sq = duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1"], alpha=0, bins=1, into="o")
    out = sq.relation.df().sort_values("a1")
    assert len(out) == 3
    np.testing.assert_allclose(out.x1, small_df.groupby("a1").x1.mean().to_numpy(), rtol=1e-12)


def test_constant_and_single_row_regions(con):
    con.execute("CREATE TABLE t AS SELECT (i % 3) AS g, 5.0 AS c, i::DOUBLE AS x FROM range(200) r(i) "
                "UNION ALL SELECT 9, 1.0, 42.0")
    out = duckquash.squash(con, "t", categorical=["g"], quantitative=["c", "x"], into="o").relation.df()
    assert (out[out.g != 9].c == 5.0).all()
    lone = out[out.g == 9]
    assert len(lone) == 1 and lone.iloc[0].x == 42.0 and lone.iloc[0].weight == 1.0


def test_hostile_names_end_to_end(con):
    con.execute("""CREATE TABLE "my ""odd"" Table" AS SELECT (i % 2)::VARCHAR AS "Cat's col", i::DOUBLE AS "x y",
                   (i * i % 17)::DOUBLE AS "Z" FROM range(500) r(i)""")
    sq = duckquash.squash(con, 'my "odd" Table', categorical=["Cat's col"], quantitative=["x y", "Z"],
                          into='out "put"', weight="w t")
    cols = [d[0] for d in sq.relation.description]
    assert cols == ["Cat's col", "x y", "Z", "w t"]
    assert con.execute('SELECT sum("w t") FROM "out ""put"""').fetchall()[0][0] == pytest.approx(500)


def test_replace(small):
    duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1"], into="o")
    with pytest.raises(duckquash.OutputExistsError):
        duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1"], into="o")
    sq = duckquash.squash(small, "small", categorical=["a2"], quantitative=["x1"], into="o", replace=True)
    assert "a2" in [d[0] for d in sq.relation.description]
