"""The per-cell IRLS pass (model/cells.py) gives the direct pass's fit to 1e-10 and statsmodels' to 1e-6."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

import duckquash
from duckquash.model import cells

from .test_glm import RESPONSE, assert_parity, statsmodels_fit

SAME = 1e-10


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(23)
    n = 4000
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.gamma(2.0, 1.0, n) + 100.0, "x3": rng.normal(size=n)})
    df["a1"] = rng.integers(0, 4, n)
    df["s"] = rng.choice(["north", "south", "east"], n)
    df["b"] = rng.random(n) < 0.3
    eta = (-0.4 + 0.6 * df.x1 - 0.02 * (df.x2 - 100) + 0.3 * (df.a1 == 1) - 0.2 * (df.s == "east")
           + 0.2 * df.x1 * (df.a1 == 2) + 0.1 * df.b)
    df["yg"] = 2 + eta + rng.normal(size=n)
    df["yb"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int32)
    df["yp"] = rng.poisson(np.exp(0.5 * eta)).astype(np.int64)
    df["w"] = rng.integers(1, 6, n).astype(float)
    df.loc[10:29, "x1"] = np.nan      # NULL numerics and categoricals: rows dropped
    df["s"] = df["s"].astype(object)
    df.loc[40:44, "s"] = None
    return df


@pytest.fixture
def ccon(frame):
    c = duckdb.connect()
    c.register("f_view", frame)
    c.execute("CREATE TABLE f AS SELECT * FROM f_view")
    c.unregister("f_view")
    yield c
    c.close()


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def assert_same(a, b):
    assert a.exog_names == b.exog_names and a.n_rows == b.n_rows and a.n_dropped == b.n_dropped
    for what in ("params", "bse", "llf", "deviance"):
        assert rel(getattr(a, what), getattr(b, what)) <= SAME, what
    np.testing.assert_allclose(a.cov_params(), b.cov_params(), rtol=1e-9, atol=1e-14)
    assert a.n_iter == b.n_iter and a.converged == b.converged


RHS = ["x1 + C(a1) + s",
       "C(a1):x1 + s + x2",
       "C(a1, Sum) + C(a1, Sum):x1 + C(s, Sum) + x2 + x3",
       "C(a1, Treatment(reference=2)) * s + x1:x3 + I(x1**2) + np.log(x2)",
       "0 + C(s):x1 + C(a1):C(s) + b",
       "C(a1) * s * x1 + x2"]


@pytest.mark.parametrize("weights", [None, "w"])
@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
@pytest.mark.parametrize("rhs", RHS)
def test_per_cell_equals_direct_and_statsmodels(ccon, frame, family, weights, rhs):
    formula = f"{RESPONSE[family]} ~ {rhs}"
    grouped = duckquash.glm(ccon, "f", formula, family, weight=weights, per_cell=True)
    direct = duckquash.glm(ccon, "f", formula, family, weight=weights, per_cell=False)
    assert_same(grouped, direct)
    assert grouped.n_dropped == 25
    ref, names = statsmodels_fit(frame, formula, family, weights)
    assert_parity(grouped, ref, names)


@pytest.mark.parametrize("cov_type", ["HC0", "HC1"])
def test_per_cell_robust_covariance(ccon, frame, cov_type):
    formula = "yb ~ C(a1):x1 + s + x2"
    grouped = duckquash.glm(ccon, "f", formula, "binomial", weight="w", cov_type=cov_type, per_cell=True)
    direct = duckquash.glm(ccon, "f", formula, "binomial", weight="w", cov_type=cov_type, per_cell=False)
    assert_same(grouped, direct)
    expanded = frame.loc[frame.index.repeat(frame["w"].astype(int))]  # the sandwich counts a row F times
    ref, _ = statsmodels_fit(expanded, formula, "binomial", None, cov_type="HC0")
    n, k = grouped.nobs, grouped.design.k
    scale = n / (n - k) if cov_type == "HC1" else 1.0
    np.testing.assert_allclose(grouped.cov_params(), np.asarray(ref.cov_params()) * scale, rtol=1e-6)


def test_choice(ccon):
    design = duckquash.build_design(ccon, "f", "yb ~ x1 + C(a1) + s")
    assert cells.choose(design)                               # 6 columns: 28 sums direct, 3 per cell
    assert not cells.choose(duckquash.build_design(ccon, "f", "yb ~ x1 + x2"))        # no categorical
    assert not cells.choose(duckquash.build_design(ccon, "f", "yb ~ (x1 + x2 + x3)**3 + b"))  # fewer direct
    assert cells.possible_cells(design) == 4 * 3


def test_chosen_by_default_and_same_fit(ccon):
    formula = "yp ~ C(a1) * s + x1"
    auto = duckquash.glm(ccon, "f", formula, "poisson")
    assert_same(auto, duckquash.glm(ccon, "f", formula, "poisson", per_cell=True))


def test_enum_boolean_decimal_and_quoted_keys(con):
    rng = np.random.default_rng(4)
    n = 3000
    con.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    df = pd.DataFrame({"x": rng.normal(size=n), "m": rng.choice(["sad", "ok", "happy"], n),
                       "flag": rng.random(n) < 0.5, "d": rng.choice([1.5, 2.25, 3.0], n),
                       "odd col": rng.choice(["a'b", "c"], n)})
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-(df.x + (df.m == "ok") - 0.5 * df.flag)))).astype(int)
    con.register("kv", df)
    con.execute("""CREATE TABLE k AS SELECT x, y, CAST(m AS mood) AS m, flag, CAST(d AS DECIMAL(4, 2)) AS d,
                   "odd col" FROM kv""")
    formula = "y ~ C(m) + C(flag):x + C(d, Sum) + C(Q(\"odd col\"))"
    grouped = duckquash.glm(con, "k", formula, "binomial", per_cell=True)
    assert_same(grouped, duckquash.glm(con, "k", formula, "binomial", per_cell=False))


def test_large_means_stay_accurate(con):
    """Numeric parts far from 0 (x ~ 1e6 + N(0, 1), z ~ 30 + N(0, 1)) are shifted before the per-cell sums."""
    rng = np.random.default_rng(8)
    n = 5000
    df = pd.DataFrame({"x": 1e6 + rng.normal(size=n), "z": 30 + rng.normal(size=n), "g": rng.integers(0, 5, n)})
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-(df.x - 1e6) + 0.2 * df.g + 0.3 * (df.z - 30)))).astype(int)
    con.register("lm", df)
    formula = "y ~ C(g) + x + C(g):z"
    grouped = duckquash.glm(con, "lm", formula, "binomial", per_cell=True)
    ref, _ = statsmodels_fit(df, formula, "binomial")
    np.testing.assert_allclose(grouped.params, ref.params, rtol=1e-8)
    np.testing.assert_allclose(grouped.bse, ref.bse, rtol=1e-8)
    assert rel(grouped.params, duckquash.glm(con, "lm", formula, "binomial", per_cell=False).params) <= 1e-8


def test_bad_input_found_by_the_per_cell_first_pass(ccon):
    from duckquash import InputError
    ccon.execute("CREATE TABLE bad AS SELECT * FROM f")
    ccon.execute("UPDATE bad SET yb = 2 WHERE a1 = 1 AND x3 > 1.5")
    with pytest.raises(InputError, match="must be 0 or 1"):
        duckquash.glm(ccon, "bad", "yb ~ C(a1) + x1", "binomial", per_cell=True)
    ccon.execute("UPDATE bad SET w = -1 WHERE a1 = 2 AND x3 > 1.5")
    with pytest.raises(InputError, match="non-negative"):
        duckquash.glm(ccon, "bad", "yg ~ C(a1) + x1", weight="w", per_cell=True)


# ---------------------------------------------------------------- the sample start (cells.sample_start)

@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    """100k rows: large enough for the sample start; carrier 'zz' has 30 rows (a rare level)."""
    rng = np.random.default_rng(5)
    n = 100_000
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.gamma(2.0, 30.0, n) + 500.0, "x3": rng.integers(1, 32, n)})
    df["g"] = rng.choice(["aa", "bb", "cc", "dd", "ee"], n, p=[0.4, 0.3, 0.2, 0.0997, 0.0003])
    df.loc[:29, "g"] = "zz"
    df["m"] = rng.integers(1, 13, n)
    df["o"] = rng.choice(["EWR", "JFK", "LGA"], n)
    eta = (-1.0 + 1.5 * df.x1 - 0.004 * (df.x2 - 560) + 0.01 * df.x3 + 0.3 * (df.g == "bb") + 1.0 * (df.g == "zz")
           + 0.05 * df.m - 0.2 * (df.o == "LGA"))
    df["yb"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int32)
    df["yp"] = rng.poisson(np.exp(0.3 * eta)).astype(np.int64)
    df["w"] = rng.integers(1, 4, n).astype(float)
    return df


@pytest.fixture
def bcon(big):
    c = duckdb.connect()
    c.register("b_view", big)
    c.execute("CREATE TABLE b AS SELECT * FROM b_view")
    c.unregister("b_view")
    yield c
    c.close()


@pytest.mark.parametrize("weights", [None, "w"])
@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_sample_start_fit_equals_statsmodels(bcon, big, family, weights, monkeypatch):
    formula = f"{RESPONSE[family]} ~ C(g) + C(m) + C(o) + x1 + x2 + x3"
    used = []
    real = cells.sample_start
    monkeypatch.setattr(cells, "sample_start", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    res = duckquash.glm(bcon, "b", formula, family, weight=weights)
    assert len(used) == 1 and used[0] is not None          # the start came from the sample
    ref, names = statsmodels_fit(big, formula, family, weights)
    assert res.exog_names == names and res.converged
    assert rel(res.params, ref.params) <= 1e-8
    assert rel(res.bse, ref.bse) <= 1e-8
    assert rel(res.llf, ref.llf) <= 1e-10 and rel(res.deviance, ref.deviance) <= 1e-10
    again = duckquash.glm(bcon, "b", formula, family, weight=weights)
    assert np.asarray(again.params).tobytes() == np.asarray(res.params).tobytes()
    assert np.asarray(again.bse).tobytes() == np.asarray(res.bse).tobytes()
    monkeypatch.setattr(cells, "SAMPLE_ROWS", 10 ** 9)     # no sample: the start pass's WLS fit
    plain = duckquash.glm(bcon, "b", formula, family, weight=weights)
    assert rel(plain.params, res.params) <= 1e-8
    assert res.n_passes <= plain.n_passes


def test_sample_start_small_source_is_skipped(ccon, monkeypatch):
    used = []
    real = cells.sample_start
    monkeypatch.setattr(cells, "sample_start", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    res = duckquash.glm(ccon, "f", "yb ~ x1 + C(a1) + s", "binomial", per_cell=True)
    assert res.converged and used == [None]                 # 4,000 rows: no sample, the start pass's fit
