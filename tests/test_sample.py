"""duckquash.sample: uniform and OSMAC subsamples in the squash output format."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import duckquash
from duckquash import InputError, OutputExistsError

QUANT = ["x1", "x2", "x3", "x4", "x5"]
MAIN = "defected ~ x1 + x2 + x3 + x4 + x5 + C(a1) + C(a2)"


def design(d: pd.DataFrame) -> np.ndarray:
    cols = [np.ones(len(d))] + [(d[a] == k).astype(float) for a in ("a1", "a2") for k in (1, 2)]
    return np.column_stack(cols + [d[c] for c in QUANT])


def weighted_fit(d: pd.DataFrame):
    return sm.GLM(d.defected, design(d), family=sm.families.Binomial(), freq_weights=d.weight).fit()


def rare_events(n: int, seed: int) -> pd.DataFrame:
    """Logistic data with about 4% events and skewed covariates: where OSMAC should shine."""
    from .conftest import paper_like

    d = paper_like(n, seed)
    rng = np.random.default_rng(seed + 100)
    eta = -4.2 + 0.3 * d.a1 - 0.2 * d.a2 + 0.5 * d.x1 - 0.1 * d.x2 + 0.3 * d.x3 - 0.3 * d.x4 + 0.2 * d.x5
    d["defected"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    return d


def test_uniform_weights_sum_to_n_and_format(small, small_df):
    r = duckquash.sample(small, "small", 400, seed=1, into="s")
    out = small.sql("SELECT * FROM s").df()
    assert (r.n_rows, r.n_points, r.n_draws) == (5000, 400, 400)
    assert list(out.columns) == list(small_df.columns) + ["weight"]
    assert out.weight.sum() == pytest.approx(5000, rel=1e-12)
    assert small.sql("SELECT typeof(weight) FROM s LIMIT 1").fetchall()[0][0] == "DOUBLE"
    # every sampled row is a source row, none twice
    assert len(out.merge(small_df, on=list(small_df.columns))) == 400


def test_uniform_is_deterministic_per_seed(small):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        duckquash.sample(small, "small", 300, seed=seed, into=name)
    same = small.sql("SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b)").fetchall()[0][0]
    diff = small.sql("SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM c)").fetchall()[0][0]
    assert same == 0 and diff > 200


def test_uniform_mse_close_to_n_over_m(con):
    """E[z^2] = N/M - 1 for a uniform sample; average over seeds to get an honest bound."""
    from .conftest import paper_like

    d = paper_like(20_000, seed=5)
    con.register("d", d)
    con.execute("CREATE TABLE calls AS SELECT * FROM d")
    full = sm.GLM(d.defected, design(d), family=sm.families.Binomial()).fit()
    m, mses = 1000, []
    for seed in range(8):
        duckquash.sample(con, "calls", m, seed=seed, into=f"u{seed}")
        fit = weighted_fit(con.sql(f"SELECT * FROM u{seed}").df())
        mses.append(np.mean(((fit.params - full.params) / full.bse) ** 2))
    expected = len(d) / m - 1
    print(f"\nuniform MSE over 8 seeds: {np.mean(mses):.1f} (expected {expected:.0f})")
    # 8 seeds x 10 coefficients: the mean is within a factor of ~1.5 of its expectation
    assert expected / 1.6 < np.mean(mses) < expected * 1.6


def test_osmac_weights_size_and_determinism(con):
    d = rare_events(20_000, seed=2)
    con.register("d", d)
    con.execute("CREATE TABLE ev AS SELECT * FROM d")
    r = duckquash.sample(con, "ev", 800, method="osmac", formula=MAIN, seed=3, into="o1")
    duckquash.sample(con, "ev", 800, method="osmac", formula=MAIN, seed=3, into="o2")
    out = con.sql("SELECT * FROM o1").df()
    assert r.n_draws == 800 and r.n_points == len(out) <= 800 and r.n_rows == 20_000
    assert out.weight.sum() == pytest.approx(20_000, rel=1e-10)
    assert (out.weight > 0).all()
    assert con.sql("SELECT count(*) FROM (SELECT * FROM o1 EXCEPT ALL SELECT * FROM o2)").fetchall()[0][0] == 0
    # the pilot (default 200 rows, half events) is in the table: events are over-represented
    assert out.defected.mean() > 2 * d.defected.mean()


def test_osmac_beats_uniform_at_equal_size(con):
    d = rare_events(60_000, seed=4)
    con.register("d", d)
    con.execute("CREATE TABLE ev AS SELECT * FROM d")
    full = sm.GLM(d.defected, design(d), family=sm.families.Binomial()).fit()
    mse = {"uniform": [], "mmse": [], "mvc": []}
    for seed in range(3):
        for label in mse:
            method = "uniform" if label == "uniform" else "osmac"
            duckquash.sample(con, "ev", 1500, method=method, formula=MAIN, seed=seed, into="t", replace=True,
                             criterion="mvc" if label == "mvc" else "mmse")
            fit = weighted_fit(con.sql("SELECT * FROM t").df())
            mse[label].append(np.mean(((fit.params - full.params) / full.bse) ** 2))
    u, o, v = (np.mean(mse[k]) for k in mse)
    print(f"\nevents {d.defected.mean():.3f}; MSE at M=1500 over 3 seeds: uniform {u:.1f}, "
          f"OSMAC-mMSE {o:.1f}, OSMAC-mVc {v:.1f}")
    assert o < 0.8 * u and v < 0.8 * u


def test_bad_input(small):
    with pytest.raises(InputError, match="more than the 5,000 rows"):
        duckquash.sample(small, "small", 5001)
    with pytest.raises(InputError, match="n \\(the sample size\\) must be an integer >= 1"):
        duckquash.sample(small, "small", 0)
    with pytest.raises(InputError, match="unknown sampling method 'stratified'"):
        duckquash.sample(small, "small", 10, method="stratified")
    with pytest.raises(InputError, match="needs a formula"):
        duckquash.sample(small, "small", 10, method="osmac")
    with pytest.raises(InputError, match="family must be 'binomial'"):
        duckquash.sample(small, "small", 500, method="osmac", formula="x1 ~ x2", family="gaussian")
    with pytest.raises(InputError, match="must be 0 or 1"):
        duckquash.sample(small, "small", 500, method="osmac", formula="x4 ~ x1 + x2")
    with pytest.raises(InputError, match="already a column"):
        duckquash.sample(small, "small", 10, weight="x1")
    duckquash.sample(small, "small", 10, into="taken")
    with pytest.raises(OutputExistsError):
        duckquash.sample(small, "small", 10, into="taken")
    small.execute("CREATE TABLE empty AS SELECT * FROM small LIMIT 0")
    with pytest.raises(InputError, match="empty"):
        duckquash.sample(small, "empty", 1)
    tables = {r[0] for r in small.sql("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables == {"small", "taken", "empty"}  # nothing half-written, no helper views left
