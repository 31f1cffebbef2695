"""LDS / ILDS: output format, determinism, accuracy vs a uniform sample, bad input, SQL and CLI."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import duckquash
from duckquash import InputError
from duckquash.lds.design import ccd, fractional_corners
from duckquash.lds.spec import TAYLOR_TOL as _TAYLOR_TOL

from .conftest import paper_like

F = "defected ~ C(a1) + C(a2) + x1 + x2 + x3 + x4 + x5"
N = 40_000
M = N // 200


@pytest.fixture(scope="module")
def df():
    return paper_like(N, seed=11)


@pytest.fixture
def calls(con, df):
    con.register("calls_view", df)
    con.execute("CREATE TABLE calls AS SELECT * FROM calls_view")
    con.unregister("calls_view")
    return con


def _design(frame):
    x = np.column_stack([np.ones(len(frame))] + [(frame[a] == k).astype(float) for a in ("a1", "a2") for k in (1, 2)]
                        + [frame[f"x{i}"] for i in range(1, 6)])
    return x


def _fit(frame, w=None):
    return sm.GLM(frame["defected"].to_numpy(float), _design(frame), family=sm.families.Binomial(),
                  freq_weights=w).fit()


def _mse(fit, full):
    return float(np.mean(((fit.params - full.params) / full.bse) ** 2))


def test_design_sizes_and_resolution():
    assert ccd(3, 2.0, 1.0).shape == (1 + 6 + 8, 3)
    f10 = fractional_corners(10)
    assert f10.shape == (32, 10)
    f50 = fractional_corners(50)
    assert f50.shape == (128, 50)
    for f in (f10, f50):  # resolution IV: main effects orthogonal to each other and to 2-factor interactions
        assert np.allclose(f.T @ f, len(f) * np.eye(f.shape[1]))
        p = f.shape[1]
        inter = np.stack([f[:, i] * f[:, j] for i in range(p) for j in range(i + 1, p)], axis=1)
        assert np.allclose(f.T @ inter, 0)


def test_output_format_and_weights(calls):
    res = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, into="sq")
    cols = [r[0] for r in calls.execute("DESCRIBE sq").fetchall()]
    assert set(cols) == {"defected", "a1", "a2", "x1", "x2", "x3", "x4", "x5", "weight"}
    n, m, wmin, ybad = calls.execute(
        "SELECT sum(weight), count(*), min(weight), count(*) FILTER (WHERE defected NOT IN (0, 1)) FROM sq").fetchone()
    assert n == pytest.approx(N) and res.n_rows == N
    assert 0.9 * M <= m <= M and wmin >= 1 and ybad == 0
    assert res.report.passes == 3 and res.report.iterations[0].profile_resid < 0.1
    assert not [t for (t,) in calls.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '__dq%'"
                                            ).fetchall()]


def test_deterministic(calls):
    a = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, seed=3, into="a")
    b = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, seed=3, into="b")
    assert a.relation.fetchall() == b.relation.fetchall()


def test_lds_beats_uniform_sample_ilds_tenfold(calls, df):
    """ILDS(3) is at least 10x below a uniform sample of the same size and not worse than LDS; one-pass LDS at least 2x
    (at M = N/200 on 40k rows, 3 data sets x squash seeds 0-2: LDS geometric mean 3.8e-4, worst 9e-4, ILDS(3) 7e-10,
    a sample ~280; with one mean point per cluster LDS was 61, worst 571, ILDS(3) 0.85; see duckquash/lds/spec.py)."""
    full = _fit(df)
    rng = np.random.default_rng(0)
    srs = np.mean([_mse(_fit(df.iloc[rng.choice(N, M, replace=False)], np.full(M, N / M)), full) for _ in range(5)])
    lds = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, into="l1").relation.df()
    ilds = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, iterations=3, into="l3").relation.df()
    mse_lds = _mse(_fit(lds, lds["weight"].to_numpy()), full)
    mse_ilds = _mse(_fit(ilds, ilds["weight"].to_numpy()), full)
    assert mse_ilds * 10 <= srs, (mse_ilds, srs)
    assert mse_lds * 2 <= srs, (mse_lds, srs)
    assert mse_ilds <= mse_lds, (mse_ilds, mse_lds)  # ILDS not worse than LDS


@pytest.mark.parametrize("m", [M, N // 1000])
def test_one_pass_lds_beats_uniform_sample_for_every_seed(calls, df, m):
    """One-pass LDS at M = N/200 and N/1000 for squash seeds 0, 1, 2: at least 2x below a uniform sample
    of M rows (before the pairs and the calibration: MSE 167 / 12.5 / 571 at M = 200 against 291, and
    ~1e6 at M = 40); each cell keeps its count."""
    full = _fit(df)
    rng = np.random.default_rng(0)
    srs = np.mean([_mse(_fit(df.iloc[rng.choice(N, m, replace=False)], np.full(m, N / m)), full) for _ in range(5)])
    counts = df.groupby(["a1", "a2", "defected"]).size()
    for seed in (0, 1, 2):
        res = duckquash.squash(calls, "calls", method="lds", formula=F, size=m, seed=seed, into=f"e{m}_{seed}")
        out = res.relation.df()
        mse = _mse(_fit(out, out["weight"].to_numpy()), full)
        assert mse * 2 <= srs, (m, seed, mse, srs)
        assert len(out) <= m and res.n_regions <= len(out) and out["weight"].min() >= 1
        got = out.groupby(["a1", "a2", "defected"])["weight"].sum()
        assert np.allclose(got.loc[counts.index].to_numpy(), counts.to_numpy(), rtol=1e-9)


def test_pairs_without_calibration_stay_in_the_data(calls, df):
    """points=2, calibrate=False: two points per cluster with half its rows each, inside the data's range."""
    res = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, calibrate=False, into="pc")
    out = res.relation.df()
    assert res.n_regions < len(out) <= M and out["weight"].sum() == pytest.approx(N)
    assert np.allclose(out["weight"] * 2, np.round(out["weight"] * 2))  # w / 2 per point of a pair, w otherwise
    for v in ("x1", "x2", "x3", "x4", "x5"):
        assert df[v].min() <= out[v].min() and out[v].max() <= df[v].max()
    one = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, points=1, calibrate=False, into="p1")
    assert one.n_points == one.n_regions and np.allclose(one.relation.df()["weight"] % 1, 0)
    for bad in (dict(points=3), dict(calibrate="yes")):
        with pytest.raises(InputError, match=next(iter(bad))):
            duckquash.squash(calls, "calls", method="lds", formula=F, size=M, into="bad", **bad)


def test_calibration_keeps_cell_totals_and_zeroes_the_score():
    from duckquash.lds.points import FLOOR, calibrate

    rng = np.random.default_rng(0)
    n = 400
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    theta = np.array([-0.8, 0.3, 0.1, -0.2])
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ theta))).astype(float)
    cell = (2 * y + (rng.random(n) < 0.5)).astype(int)
    w = rng.integers(1, 50, n).astype(float)
    target = sm.GLM(y, X, family=sm.families.Binomial(), freq_weights=w).fit().params + 0.05
    new, moved, change, left = calibrate(X, y, w, cell, "binomial", target)
    assert moved is None  # weights only: no positions were given
    assert left < 1e-9 and 0 < change
    assert np.allclose(np.bincount(cell, new), np.bincount(cell, w))
    assert np.all(new >= np.maximum(FLOOR * w, 1) - 1e-9)
    fit = sm.GLM(y, X, family=sm.families.Binomial(), freq_weights=new).fit()
    assert np.allclose(fit.params, target, atol=1e-6)  # the calibrated weights' MLE is the target


def test_seed_changes_the_sample(calls):
    a = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, seed=0, into="s0").report
    b = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, seed=1, into="s1").report
    assert not np.allclose(a.iterations[0].theta0, b.iterations[0].theta0)


@pytest.mark.parametrize("kw, msg", [
    (dict(formula="defected ~ x1 + nope"), "nope"),
    (dict(formula="x2 ~ x1"), "0 or 1"),
    (dict(size=N + 1), "exceeds"),
    (dict(size=5), "number of model parameters"),
    (dict(family="tweedie"), "family"),
    (dict(formula="x1 + x2"), "formula"),
])
def test_bad_input_names_problem_and_writes_nothing(calls, kw, msg):
    args = dict(formula=F, size=M) | kw
    with pytest.raises(InputError, match=msg):
        duckquash.squash(calls, "calls", method="lds", into="out", **args)
    names = [t for (t,) in calls.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    assert names == ["calls"]


def test_sql_and_cli(tmp_path, df):
    db = str(tmp_path / "d.duckdb")
    con = duckquash.connect(db)
    con.register("v", df.iloc[:10_000])
    con.execute("CREATE TABLE calls AS SELECT * FROM v")
    con.unregister("v")
    rows = con.execute(f"CALL squash('calls', method := 'lds', formula := '{F}', size := 100)").fetchall()
    assert 90 <= len(rows) <= 100 and sum(r[-1] for r in rows) == pytest.approx(10_000)
    con.close()
    from duckquash.frontends.cli import main

    out = str(tmp_path / "o.parquet")
    assert main(["squash", f"{db}:calls", "-o", out, "--method", "lds", "--formula", F, "--size", "100",
                 "--quiet"]) == 0
    w = duckdb.sql(f"SELECT sum(weight), count(*) FROM read_parquet('{out}')").fetchall()[0]
    assert w[0] == pytest.approx(10_000) and w[1] <= 100


def test_odd_column_names(con, df):
    frame = df.iloc[:5_000].rename(columns={"x1": 'my x"1', "defected": "de'fected", "a1": "a 1"})
    con.register("v", frame)
    con.execute('CREATE TABLE "odd tbl" AS SELECT * FROM v')
    con.unregister("v")
    res = duckquash.squash(con, "odd tbl", method="lds", formula="`de'fected` ~ `my x\"1` + x2 + C(`a 1`)",
                           size=50, into="odd out", weight="w t")
    cols = [r[0] for r in con.execute('DESCRIBE "odd out"').fetchall()]
    assert set(cols) == {"de'fected", 'my x"1', "x2", "a 1", "w t"}
    assert con.execute('SELECT sum("w t") FROM "odd out"').fetchall()[0][0] == pytest.approx(5_000)
    assert res.n_points <= 50


def _coordinates(con, family: str, formula: str, spread: float):
    """Exact profile coordinates of every row of ``calls``, and the second-order ones without and with
    the quadratic terms, and each coordinate's within-cell spread."""
    from duckquash import glm
    from duckquash.io.source import resolve
    from duckquash.lds import cells as LC, design as LD, pipeline as LP, profiles as LPr, spec as LS

    spec = LS.LdsSpec(formula=formula, size=100, family=family)
    m = LC.build_model(con, resolve(con, "calls"), spec)
    con.execute("DROP TABLE IF EXISTS cells")
    LC.cells_pass(con, m, spec, "cells")
    theta0, chol = LP._design_from_fit(glm(con, "calls", formula, family))
    U = LD.ccd(len(theta0), spread, spread)
    rows = LC.with_cell_sql(m, LC.keyed_sql(m), "cells")
    lnames = [f"__dq_l{k}" for k in range(len(U))]
    prof = con.execute(f"SELECT __dq_cell, {', '.join(lnames)} FROM "
                       f"({LPr.profile_sql(family, U, LPr.rows_sql(m, theta0, chol, rows))})").fetchnumpy()
    P = np.column_stack([prof[k] for k in lnames])
    basis = LPr.basis(P, prof["__dq_cell"], len(theta0), family != "binomial")
    d = basis.B.shape[1]
    get = lambda quad: np.column_stack(list(con.execute(  # noqa: E731
        f"SELECT {', '.join(f'__dq_c{r}' for r in range(d))} FROM "
        f"({LPr.coords_sql(m, family, theta0, U @ chol.T, basis, rows, [], quad)})").fetchnumpy().values()))
    exact = get(None)
    assert np.allclose(exact, (P @ basis.B - basis.mu) / basis.sd, atol=1e-8)  # the exact path is the profile
    return exact, get(np.zeros(d, bool)), get(np.ones(d, bool)), basis.spread


def test_second_order_profiles_converge_at_third_order(calls):
    """The expansion's error relative to each coordinate's spread falls like the design's spread
    squared (error O(g^3), spread O(g)): halving ds = df divides it by ~4; the quadratic terms help."""
    errs = []
    for spread in (0.4, 0.2, 0.1):
        exact, lean, full, within = _coordinates(calls, "binomial", F, spread)
        e_full = (np.abs(full - exact).max(axis=0) / within).max()
        assert 0 < e_full <= (np.abs(lean - exact).max(axis=0) / within).max()
        errs.append(e_full)
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    print("second-order error / spread at ds = df = 0.4, 0.2, 0.1:", errs)
    assert np.all((ratios > 3) & (ratios < 5.5)), (errs, ratios)
    assert errs[-1] < 1e-2  # design points 0.1 SE apart: within the 'auto' tolerance


def test_second_order_profiles_exact_for_gaussian(calls):
    exact, _, full, _ = _coordinates(calls, "gaussian", "x1 ~ x2 + x3 + C(a1)", 2.0)
    assert np.allclose(full, exact, rtol=1e-9, atol=1e-9 * np.abs(exact).max())


def test_profiles_auto_picks_second_order_only_within_tolerance(calls):
    """At 40k rows with design points 2 SE apart the bound is far above 1%: 'auto' stays exact; with
    ds = df = 0.01 it switches to second order and the squash matches the exact one closely."""
    a = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, into="a").report.iterations[0]
    assert a.profiles == "exact" and a.profile_error is None
    kw = {"formula": F, "size": M, "ds": 0.01, "df": 0.01}
    b = duckquash.squash(calls, "calls", method="lds", into="b", **kw)
    c = duckquash.squash(calls, "calls", method="lds", into="c", profiles="exact", **kw)
    assert b.report.iterations[0].profiles == "second-order" and b.report.iterations[0].profile_error <= _TAYLOR_TOL
    assert c.report.iterations[0].profiles == "exact"
    tb, tc = b.relation.df(), c.relation.df()
    assert len(tb) == len(tc)
    # the same clusters up to rows within 1% of a split: the squashed fits agree to a fraction of an
    # SE (mean z^2 0.014 seen; freq weights sum to N, so bse is at the full-data scale)
    fb, fc = _fit(tb, tb["weight"].to_numpy()), _fit(tc, tc["weight"].to_numpy())
    assert _mse(fb, fc) < 0.05, _mse(fb, fc)


def test_null_slopes_resolved(con):
    """y independent of nine normal x (slopes ~0, so eta_0 varies little within a response cell): the
    clusters must still resolve every direction of x. Before the coordinates were scaled by their
    within-cell spread the fit missed by up to 38 SE here (MSE ~470; now ~5, a sample of M rows ~200)."""
    n, m = 100_000, 500
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 9))
    frame = pd.DataFrame(x, columns=[f"x{j}" for j in range(1, 10)])
    frame["y"] = (rng.random(n) < 0.3).astype(int)
    con.register("v", frame)
    con.execute("CREATE TABLE nul AS SELECT * FROM v")
    formula = "y ~ " + " + ".join(frame.columns[:9])
    sq = duckquash.squash(con, "nul", method="lds", formula=formula, size=m, into="sq").relation.df()
    design = lambda f: np.column_stack([np.ones(len(f))] + [f[c] for c in frame.columns[:9]])  # noqa: E731
    full = sm.GLM(frame["y"].to_numpy(float), design(frame), family=sm.families.Binomial()).fit()
    fit = sm.GLM(sq["y"].to_numpy(float), design(sq), family=sm.families.Binomial(),
                 freq_weights=sq["weight"].to_numpy()).fit()
    assert _mse(fit, full) < 20, _mse(fit, full)


def test_refine_matches_summed_profiles_better(calls, df):
    """refine=True (the paper's optional step) lowers every run's profile-match residual and keeps the
    output format; it moves only quantitative variables, and stays inside the data's range."""
    plain = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, into="p").report.iterations[0]
    res = duckquash.squash(calls, "calls", method="lds", formula=F, size=M, refine=True, into="r")
    it = res.report.iterations[0]
    assert it.refined_resid < 0.9 * it.profile_resid and it.profile_resid == pytest.approx(plain.profile_resid)
    out = res.relation.df()
    assert out["weight"].sum() == pytest.approx(N) and set(out["defected"]) <= {0, 1}
    for v in ("x1", "x2", "x3", "x4", "x5"):
        assert df[v].min() <= out[v].min() and out[v].max() <= df[v].max()
    with pytest.raises(InputError, match="refine"):
        duckquash.squash(calls, "calls", method="lds", formula=F, size=M, refine="yes", into="bad")


def test_sql_and_cli_take_profiles_refine_points_and_calibrate(tmp_path, df):
    con = duckquash.connect(str(tmp_path / "d.duckdb"))
    con.register("v", df.iloc[:10_000])
    con.execute("CREATE TABLE calls AS SELECT * FROM v")
    con.unregister("v")
    rows = con.execute(f"CALL squash('calls', method := 'lds', formula := '{F}', size := 100, profiles := 'exact', "
                       "refine := true)").fetchall()
    assert 90 <= len(rows) <= 100 and sum(r[-1] for r in rows) == pytest.approx(10_000)
    one = con.execute(f"CALL squash('calls', method := 'lds', formula := '{F}', size := 100, points := 1, "
                      "calibrate := false)").fetchall()
    assert 90 <= len(one) <= 100 and all(float(r[-1]).is_integer() for r in one)  # cluster sizes, as before
    with pytest.raises(duckdb.Error, match="profiles"):
        con.execute(f"CALL squash('calls', method := 'lds', formula := '{F}', size := 100, profiles := 'fast')")
    con.close()
    from duckquash.frontends.cli import main

    out = str(tmp_path / "o.parquet")
    assert main(["squash", f"{tmp_path / 'd.duckdb'}:calls", "-o", out, "--method", "lds", "--formula", F,
                 "--size", "100", "--profiles", "exact", "--refine", "--quiet"]) == 0
    assert duckdb.sql(f"SELECT sum(weight) FROM read_parquet('{out}')").fetchall()[0][0] == pytest.approx(10_000)
    out1 = str(tmp_path / "o1.parquet")
    assert main(["squash", f"{tmp_path / 'd.duckdb'}:calls", "-o", out1, "--method", "lds", "--formula", F,
                 "--size", "100", "--points", "1", "--no-calibrate", "--quiet"]) == 0
    n, frac = duckdb.sql(f"SELECT sum(weight), sum(weight - floor(weight)) FROM read_parquet('{out1}')").fetchall()[0]
    assert n == pytest.approx(10_000) and frac == 0
