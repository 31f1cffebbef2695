"""duckquash.glm equals statsmodels GLM(freq_weights=...) on the same data in memory; bad input is refused."""
from __future__ import annotations

import warnings

import duckdb
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from formulaic import model_matrix

import duckquash
from duckquash import ConvergenceWarning, InputError, PerfectSeparationWarning

RTOL = 1e-6
SM_FAMILY = {"gaussian": sm.families.Gaussian, "binomial": sm.families.Binomial, "poisson": sm.families.Poisson}
RESPONSE = {"gaussian": "yg", "binomial": "yb", "poisson": "yp"}


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 3000
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.gamma(2.0, 1.0, n), "x3": rng.normal(size=n)})
    df["a1"] = rng.integers(0, 3, n)
    df["s"] = rng.choice(["north", "south", "east"], n)
    eta = -0.4 + 0.6 * df.x1 - 0.2 * df.x2 + 0.3 * (df.a1 == 1) - 0.2 * (df.s == "east") + 0.2 * df.x1 * df.x3
    df["yg"] = 2 + eta + rng.normal(size=n)
    df["yb"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int32)
    df["yp"] = rng.poisson(np.exp(0.5 * eta)).astype(np.int64)
    df["w"] = rng.integers(1, 6, n).astype(float)
    return df


@pytest.fixture
def dcon(data):
    c = duckdb.connect()
    c.register("d_view", data)
    c.execute("CREATE TABLE d AS SELECT * FROM d_view")
    c.unregister("d_view")
    yield c
    c.close()


def statsmodels_fit(df, formula, family, weights=None, cov_type="nonrobust"):
    mm = model_matrix(formula, df)
    fw = None if weights is None else df.loc[mm.rhs.index, weights].to_numpy()
    model = sm.GLM(mm.lhs.to_numpy()[:, 0], mm.rhs, family=SM_FAMILY[family](), freq_weights=fw)
    return model.fit(tol=1e-13, cov_type=cov_type), list(mm.rhs.columns)


def assert_parity(res, ref, names):
    assert res.exog_names == names
    np.testing.assert_allclose(res.params, ref.params, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=RTOL)
    np.testing.assert_allclose(res.llf, ref.llf, rtol=RTOL)
    np.testing.assert_allclose(res.deviance, ref.deviance, rtol=RTOL)
    np.testing.assert_allclose(res.aic, ref.aic, rtol=RTOL)
    np.testing.assert_allclose(res.bic, ref.bic_llf, rtol=RTOL)
    np.testing.assert_allclose(res.bic_deviance, ref.bic_deviance, rtol=RTOL)
    np.testing.assert_allclose(res.pvalues, ref.pvalues, rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose(res.conf_int(), ref.conf_int(), rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(res.cov_params(), ref.cov_params(), rtol=1e-5, atol=1e-12)
    assert res.df_resid == pytest.approx(ref.df_resid) and res.df_model == ref.df_model
    assert res.nobs == pytest.approx(ref.model.wnobs)
    assert res.converged


@pytest.mark.parametrize("weights", [None, "w"])
@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
@pytest.mark.parametrize("rhs", ["x1 + x2 + x3", "(x1 + x2 + x3)**2 + C(a1) + s + I(x1**2) + np.log(x2)"])
def test_parity_with_statsmodels(dcon, data, family, weights, rhs):
    formula = f"{RESPONSE[family]} ~ {rhs}"
    res = duckquash.glm(dcon, "d", formula, family, weight=weights)
    ref, names = statsmodels_fit(data, formula, family, weights)
    assert_parity(res, ref, names)
    assert res.weight == weights and res.n_dropped == 0


def test_gaussian_is_one_pass(dcon):
    res = duckquash.glm(dcon, "d", "yg ~ x1 + C(a1)")
    assert res.n_passes == 1 and res.n_iter == 1


def test_seed_formula(con):
    rng = np.random.default_rng(5)
    n = 4000
    df = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    df["cat1"] = rng.integers(0, 5, n)
    formula = "y ~ 0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment, levels=lnames)"
    lnames = np.arange(5)
    beta = np.arange(0, 1, 1.0 / 12)
    mm = model_matrix(formula.replace("Treatment, ", "").split("~")[1], df, context={"lnames": lnames})
    df["y"] = mm.to_numpy() @ beta + rng.normal(size=n)
    con.register("seed", df)
    res = duckquash.glm(con, "seed", formula, levels={"lnames": lnames})
    ref = sm.GLM(df["y"], mm).fit()
    np.testing.assert_allclose(res.params, ref.params, rtol=RTOL)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=RTOL)
    np.testing.assert_allclose(res.llf, ref.llf, rtol=RTOL)
    assert res.exog_names[4] == "C(cat1, Treatment, levels=lnames)[0]"
    assert np.max(np.abs(res.params - beta)) < 0.1


def test_missing_rows_dropped_like_statsmodels(con, data):
    df = data.copy()
    df.loc[10:29, "x1"] = np.nan
    df.loc[40:44, "s"] = None
    df["s"] = df["s"].astype(object)
    con.register("dm", df)
    formula = "yb ~ x1 + s + x1:s"
    res = duckquash.glm(con, "dm", formula, "binomial", weight="w")
    ref, names = statsmodels_fit(df, formula, "binomial", "w")  # formulaic drops incomplete rows
    assert res.n_dropped == 25 and res.n_rows == len(df) - 25
    assert_parity(res, ref, names)
    assert "rows dropped=25" in res.summary()


def test_hc0_equals_statsmodels_and_hc1_adds_small_sample_factor(dcon, data):
    formula = "yb ~ x1 + x2 + s"
    res0 = duckquash.glm(dcon, "d", formula, "binomial", cov_type="HC0")
    ref0, _ = statsmodels_fit(data, formula, "binomial", None, cov_type="HC0")
    np.testing.assert_allclose(res0.bse, ref0.bse, rtol=RTOL)
    np.testing.assert_allclose(res0.params, ref0.params, rtol=RTOL)
    res1 = duckquash.glm(dcon, "d", formula, "binomial", cov_type="HC1")
    n, k = res1.nobs, len(res1.params)
    np.testing.assert_allclose(res1.bse, res0.bse * np.sqrt(n / (n - k)), rtol=1e-12)
    # gaussian HC1 is OLS's HC1
    ols = sm.OLS(data["yg"], sm.add_constant(data[["x1", "x2"]])).fit(cov_type="HC1")
    np.testing.assert_allclose(duckquash.glm(dcon, "d", "yg ~ x1 + x2", cov_type="HC1").bse, ols.bse, rtol=RTOL)


def test_weighted_hc0_equals_expanded_rows(dcon, data):
    """With frequency weights, the sandwich counts each row F times (same as repeating the rows)."""
    res = duckquash.glm(dcon, "d", "yp ~ x1 + C(a1)", "poisson", weight="w", cov_type="HC0")
    expanded = data.loc[data.index.repeat(data["w"].astype(int))]
    ref, _ = statsmodels_fit(expanded, "yp ~ x1 + C(a1)", "poisson", None, cov_type="HC0")
    np.testing.assert_allclose(res.bse, ref.bse, rtol=RTOL)


def test_squashed_weight_column_used_automatically(con, data):
    con.register("dv", data)
    con.execute("CREATE TABLE sq AS SELECT yb, x1, x2, w::DOUBLE AS weight FROM dv")
    with_auto = duckquash.glm(con, "sq", "yb ~ x1 + x2", "binomial")
    explicit = duckquash.glm(con, "sq", "yb ~ x1 + x2", "binomial", weight="weight")
    assert with_auto.weight == "weight" and "automatically" in with_auto.summary()
    np.testing.assert_allclose(with_auto.params, explicit.params, rtol=1e-12)
    assert with_auto.nobs == pytest.approx(data["w"].sum())
    # a column named weight that the formula uses is a variable, not the weights
    assert duckquash.glm(con, "sq", "yb ~ weight", "binomial").weight is None


def test_predict_in_sql(dcon, data):
    res = duckquash.glm(dcon, "d", "yp ~ x1 + s + np.log(x2)", "poisson")
    ref, _ = statsmodels_fit(data, "yp ~ x1 + s + np.log(x2)", "poisson")
    rel = res.predict(dcon, "d")
    assert isinstance(rel, duckdb.DuckDBPyRelation)
    pred = rel.fetchdf()["predicted"].to_numpy()
    np.testing.assert_allclose(pred, ref.predict(), rtol=1e-6)
    rel2 = res.predict(dcon, dcon.sql("SELECT x1, s, x2 FROM d LIMIT 5"))
    np.testing.assert_allclose(rel2.fetchdf()["predicted"], pred[:5], rtol=1e-6)


def test_sources_file_and_query(dcon, tmp_path):
    path = str(tmp_path / "d.parquet")
    dcon.execute(f"COPY d TO '{path}' (FORMAT parquet)")
    a = duckquash.glm(dcon, path, "yg ~ x1 + s")
    b = duckquash.glm(dcon, "SELECT * FROM d", "yg ~ x1 + s")
    c = duckquash.glm(dcon, dcon.table("d"), "yg ~ x1 + s")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-12)
    np.testing.assert_allclose(a.params, c.params, rtol=1e-12)


def test_summary_and_str(dcon):
    res = duckquash.glm(dcon, "d", "yb ~ x1 + s", "binomial")
    text = res.summary()
    for word in ("binomial", "llf", "deviance", "Intercept", "s[T.south]", "converged=True"):
        assert word in text
    assert str(res) == text


def test_collinear_columns_named(dcon):
    with pytest.raises(InputError, match=r"columns \['x1', 'x2', 'I\(x1 \+ 2 \* x2\)'\] are perfectly collinear"):
        duckquash.glm(dcon, "d", "yg ~ x1 + x2 + x3 + I(x1 + 2 * x2)")
    with pytest.raises(InputError, match=r"\[.C\(a1\)\[T.1\]., .I\(a1 == 1\).\] are perfectly collinear"):
        duckquash.glm(dcon, "d", "yb ~ x1 + C(a1) + I(a1 == 1)", "binomial")


def test_perfect_separation_warns(con):
    con.execute("CREATE TABLE sep AS SELECT (i % 97)::DOUBLE - 48 AS x, ((i % 97) > 48)::INT AS y FROM range(500) r(i)")
    with pytest.warns(PerfectSeparationWarning, match="separation"):
        res = duckquash.glm(con, "sep", "y ~ x", "binomial")
    assert not np.isfinite(res.params).all() or abs(res.params.iloc[1]) > 10


def test_quasi_separation_warns(con, data):
    con.register("dq", data)
    # z = 1 implies y = 1: the coefficient of z diverges
    con.execute("CREATE TABLE qs AS SELECT x1, (x2 > 4)::INT AS z, CASE WHEN x2 > 4 THEN 1 ELSE yb END AS y FROM dq")
    with pytest.warns(PerfectSeparationWarning):
        duckquash.glm(con, "qs", "y ~ x1 + z", "binomial")


def test_non_convergence_warns(dcon):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = duckquash.glm(dcon, "d", "yb ~ x1 + x2", "binomial", max_iter=2)
    assert not res.converged and res.n_iter == 2


def test_no_warning_on_a_good_fit(dcon):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        duckquash.glm(dcon, "d", "yb ~ x1 + x2 + s", "binomial")


BAD = [
    (dict(formula="yg ~ x1 + nope"), "unknown variable 'nope'"),
    (dict(formula="yg ~ x1", family="gamma"), "family must be one of"),
    (dict(formula="yg ~ x1", family="binomial"), "must be 0 or 1"),
    (dict(formula="yg ~ x1", family="poisson"), "must be non-negative"),
    (dict(formula="yg ~ x1", weight="nope"), "weight column 'nope'"),
    (dict(formula="yg ~ x1", weight="s"), "must be numeric"),
    (dict(formula="yg ~ x1", weight="neg"), "negative, NULL"),
    (dict(formula="yg ~ x1", weight="nullw"), "negative, NULL"),
    (dict(formula="yg ~ x1", cov_type="HC3"), "cov_type"),
    (dict(formula="x1 + x2"), "needs a response"),
    (dict(formula="yg ~ C(a1, levels=[0, 1, 2, 7])"), "never occur"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[b[1] for b in BAD])
def test_bad_input(dcon, kwargs, message):
    dcon.execute("ALTER TABLE d ADD COLUMN neg DOUBLE DEFAULT 1.0")
    dcon.execute("UPDATE d SET neg = -1.0 WHERE rowid = 7")
    dcon.execute("ALTER TABLE d ADD COLUMN nullw DOUBLE DEFAULT 1.0")
    dcon.execute("UPDATE d SET nullw = NULL WHERE rowid = 3")
    before = dcon.execute("SELECT count(*) FROM information_schema.tables").fetchall()
    with pytest.raises(InputError, match=message):
        duckquash.glm(dcon, "d", **kwargs)
    assert dcon.execute("SELECT count(*) FROM information_schema.tables").fetchall() == before


def test_empty_source(con):
    con.execute("CREATE TABLE e (y DOUBLE, x DOUBLE)")
    with pytest.raises(InputError, match="empty"):
        duckquash.glm(con, "e", "y ~ x")
    con.execute("INSERT INTO e VALUES (NULL, 1.0), (2.0, NULL)")
    with pytest.raises(InputError, match="no complete rows"):
        duckquash.glm(con, "e", "y ~ x")


def test_relation_source_leaves_no_view(dcon):
    before = dcon.execute("SELECT count(*) FROM information_schema.tables").fetchall()
    duckquash.glm(dcon, dcon.sql("SELECT * FROM d"), "yg ~ x1")
    assert dcon.execute("SELECT count(*) FROM information_schema.tables").fetchall() == before


def test_deterministic_across_runs(con):
    """Plain DOUBLE sums depend on thread order only at rounding level: fits agree to 1e-12."""
    con.execute("SET threads = 2")
    con.execute("""CREATE TABLE big AS SELECT (hash(i) % 1000)::DOUBLE / 100 AS x, (hash(i + 7) % 13)::DOUBLE AS z,
                   (hash(i * 3) % 10 < 4)::INT AS y FROM range(400000) r(i)""")
    fits = [duckquash.glm(con, "big", "y ~ x * z", "binomial") for _ in range(3)]
    for f in fits[1:]:
        np.testing.assert_allclose(f.params, fits[0].params, rtol=1e-12, atol=0)
        assert abs(f.llf - fits[0].llf) <= 1e-12 * abs(fits[0].llf)
