"""duckquash.crossprod: X'X, X'y and the design's SVD facts from one SQL pass, against numpy on the same data."""
import duckdb
import numpy as np
import pandas as pd
import pytest
from formulaic import model_matrix

import duckquash


@pytest.fixture()
def con_df():
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({"a": rng.normal(5, 2, n), "b": rng.normal(size=n), "c": rng.exponential(size=n),
                       "cat1": rng.integers(0, 4, n), "w": rng.integers(1, 5, n).astype(float)})
    df["y"] = 1 + 2 * df.a - df.b + 0.5 * df.a * df.b + df.cat1 + rng.normal(size=n)
    con = duckdb.connect()
    con.register("df_view", df)
    con.execute("CREATE TABLE t AS SELECT * FROM df_view")
    return con, df


def test_matches_numpy_svd(con_df):
    con, df = con_df
    f = "y ~ a + b + c + a:b + C(cat1)"
    cp = duckquash.crossprod(con, "t", f)
    y, x = model_matrix(f, df)
    X, yv = x.to_numpy(float), y.to_numpy(float).ravel()
    assert cp.names == tuple(x.columns)
    np.testing.assert_allclose(cp.xtx, X.T @ X, rtol=1e-12)
    np.testing.assert_allclose(cp.xty, X.T @ yv, rtol=1e-12)
    s = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(cp.singular_values, s, rtol=1e-8)
    assert cp.rank == np.linalg.matrix_rank(X) == X.shape[1]
    assert cp.condition_number == pytest.approx(np.linalg.cond(X), rel=1e-6)
    np.testing.assert_allclose(cp.solve(), np.linalg.lstsq(X, yv, rcond=None)[0], rtol=1e-8)
    v = cp.right_singular_vectors  # X'X v = s^2 v
    np.testing.assert_allclose(cp.xtx @ v, v * s ** 2, rtol=1e-6, atol=1e-6 * s[0] ** 2)
    assert cp.frame().loc["a", "b"] == pytest.approx(float(X[:, 1] @ X[:, 2]))
    assert "rank 8 of 8" in cp.summary()


def test_weighted_no_lhs_and_missing(con_df):
    con, df = con_df
    con.execute("UPDATE t SET b = NULL WHERE rowid % 10 = 0")
    cp = duckquash.crossprod(con, "t", "~ a + b", weight="w")
    keep = df.index % 10 != 0
    X = np.column_stack([np.ones(keep.sum()), df.a[keep], df.b[keep]])
    w = df.w[keep].to_numpy()
    np.testing.assert_allclose(cp.xtx, X.T @ (w[:, None] * X), rtol=1e-12)
    assert cp.xty is None and cp.n_dropped == 300 and cp.n_rows == 2700 and cp.nobs == pytest.approx(w.sum())
    with pytest.raises(duckquash.InputError, match="no left-hand side"):
        cp.solve()


def test_rank_deficient(con_df):
    con, _ = con_df
    con.execute("ALTER TABLE t ADD COLUMN d DOUBLE")
    con.execute("UPDATE t SET d = 2 * a - b")
    cp = duckquash.crossprod(con, "t", "y ~ a + b + d")
    assert cp.rank == 3 and cp.condition_number > 1e6


def test_refusals(con_df):
    con, _ = con_df
    with pytest.raises(duckquash.InputError, match="weight column 'nope'"):
        duckquash.crossprod(con, "t", "y ~ a", weight="nope")
    con.execute("CREATE TABLE wide AS SELECT range % 200 AS g, random() AS x FROM range(1000)")
    with pytest.raises(duckquash.InputError, match="levels|columns"):
        duckquash.crossprod(con, "wide", "x ~ C(g)")
