"""Squashed fits against full-data fits (statsmodels, in memory), and against a uniform sample."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import duckquash

from .conftest import paper_like

CATS = ["a1", "a2", "defected"]
QUANT = ["x1", "x2", "x3", "x4", "x5"]


def main_effects(d: pd.DataFrame) -> np.ndarray:
    cols = [np.ones(len(d))] + [(d[a] == k).astype(float) for a in ("a1", "a2") for k in (1, 2)]
    return np.column_stack(cols + [d[c] for c in QUANT])


def second_order(d: pd.DataFrame) -> np.ndarray:
    xs = [d[c].to_numpy() for c in QUANT]
    return np.column_stack([main_effects(d)] + [xs[i] * xs[j] for i in range(5) for j in range(i, 5)])


def mse(fit, full) -> float:
    return float(np.mean(((fit.params - full.params) / full.bse) ** 2))


@pytest.fixture(scope="module")
def squashed():
    df = paper_like(200_000, seed=7)
    con = duckdb_con(df)
    sq = duckquash.squash(con, "calls", categorical=CATS, quantitative=QUANT, method="hyprect", alpha=1.0, into="sq")
    return df, sq.relation.df(), sq


def duckdb_con(df):
    import duckdb

    con = duckdb.connect()
    con.register("df", df)
    con.execute("CREATE TABLE calls AS SELECT * FROM df")
    return con


def test_logistic_main_effects_beats_uniform_sample(squashed):
    df, out, sq = squashed
    binom = sm.families.Binomial()
    full = sm.GLM(df.defected, main_effects(df), family=binom).fit()
    red = sm.GLM(out.defected, main_effects(out), family=binom, freq_weights=out.weight).fit()
    rng = np.random.default_rng(11)
    s = df.iloc[rng.choice(len(df), sq.n_points, replace=False)]
    smp = sm.GLM(s.defected, main_effects(s), family=binom, freq_weights=np.full(len(s), len(df) / len(s))).fit()
    ratio = len(df) / sq.n_points
    print(f"\nN/M = {ratio:.1f}; main effects MSE: squashed {mse(red, full):.4f}, uniform sample {mse(smp, full):.2f}")
    assert mse(red, full) <= 1.0
    assert mse(smp, full) > ratio / 4  # the sample behaves like N/M, far above the squash
    full2 = sm.GLM(df.defected, second_order(df), family=binom).fit()
    red2 = sm.GLM(out.defected, second_order(out), family=binom, freq_weights=out.weight).fit()
    smp2 = sm.GLM(s.defected, second_order(s), family=binom, freq_weights=np.full(len(s), len(df) / len(s))).fit()
    print(f"second-order model MSE: squashed {mse(red2, full2):.4f}, uniform sample {mse(smp2, full2):.2f}")
    assert mse(red2, full2) < mse(smp2, full2)


def test_weighted_linear_regression_exact(squashed):
    df, out, _ = squashed
    X = lambda d: main_effects(d)[:, [0, 1, 2, 3, 4, 6, 7, 8, 9]]  # noqa: E731 - x1 on the rest
    full = sm.WLS(df.x1, X(df)).fit()
    red = sm.WLS(out.x1, X(out), weights=out.weight).fit()
    np.testing.assert_allclose(red.params, full.params, rtol=1e-6)
    # also with the binary response as a regressor's outcome
    full_y = sm.WLS(df.defected, main_effects(df)).fit()
    red_y = sm.WLS(out.defected, main_effects(out), weights=out.weight).fit()
    np.testing.assert_allclose(red_y.params, full_y.params, rtol=1e-6)
