"""duckquash.evaluate against the same numbers computed directly with statsmodels in memory."""
import os

import numpy as np
import pytest
import statsmodels.api as sm

import duckquash
from duckquash import InputError
from duckquash.frontends.cli import main

QUANT = ["x1", "x2", "x3", "x4", "x5"]
FORMULA = "defected ~ x1 + x2 + x3 + x4 + x5 + C(a1) + C(a2)"


def design(d) -> np.ndarray:
    cols = [np.ones(len(d))] + [(d[a] == k).astype(float) for a in ("a1", "a2") for k in (1, 2)]
    return np.column_stack(cols + [d[c] for c in QUANT])


@pytest.fixture
def reduced(small):
    duckquash.squash(small, "small", categorical=["a1", "a2", "defected"], quantitative=QUANT, into="sq")
    duckquash.sample(small, "small", 500, seed=2, into="unif")
    return small


def test_numbers_equal_statsmodels(reduced, small_df, tmp_path):
    con = reduced
    png = str(tmp_path / "fig.png")
    ev = duckquash.evaluate(con, "small", {"squash": "sq", "uniform": "unif"}, FORMULA, "binomial", plot=png)
    binom = sm.families.Binomial()
    full = sm.GLM(small_df.defected, design(small_df), family=binom).fit()
    rows = {r["method"]: r for r in ev.table.to_pylist()}
    assert list(rows) == ["squash", "uniform"]
    for label, table in (("squash", "sq"), ("uniform", "unif")):
        d = con.sql(f"SELECT * FROM {table}").df()
        fit = sm.GLM(d.defected, design(d), family=binom, freq_weights=d.weight).fit()
        z = (fit.params - full.params) / full.bse
        resid = (fit.predict(design(small_df)) - full.predict(design(small_df))) * 1e4
        r = rows[label]
        assert r["M"] == len(d)
        assert r["reduction"] == pytest.approx(5000 / len(d), rel=1e-12)
        assert r["mse"] == pytest.approx(np.mean(z ** 2), rel=1e-5, abs=1e-8)
        assert r["max_abs_z"] == pytest.approx(np.max(np.abs(z)), rel=1e-5, abs=1e-8)
        assert r["resid_mean_1e4"] == pytest.approx(resid.mean(), rel=1e-5, abs=1e-6)
        assert r["resid_sd_1e4"] == pytest.approx(resid.std(ddof=1), rel=1e-5, abs=1e-6)
        assert r["resid_min_1e4"] == pytest.approx(resid.min(), rel=1e-5, abs=1e-6)
        assert r["resid_max_1e4"] == pytest.approx(resid.max(), rel=1e-5, abs=1e-6)
        assert r["fit_seconds"] > 0
    assert rows["squash"]["mse"] < rows["uniform"]["mse"]
    assert ev.z.num_rows == 2 * 10
    md = ev.to_markdown()
    assert md.count("\n") == 3 and "| squash |" in md and "MSE(z)" in md
    assert "uniform" in str(ev) and "N = 5,000" in str(ev)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_accepts_result_objects(small):
    s = duckquash.sample(small, "small", 1000, seed=1)
    ev = duckquash.evaluate(small, "small", {"u": s}, FORMULA)
    assert ev.table.column("M").to_pylist() == [1000]


def test_bad_input(small):
    with pytest.raises(InputError, match="non-empty dict"):
        duckquash.evaluate(small, "small", {}, FORMULA)
    with pytest.raises(InputError, match="no weight column 'weight'"):
        duckquash.evaluate(small, "small", {"raw": "small"}, FORMULA)


def test_cli_evaluate(small, tmp_path, capsys):
    full, unif = str(tmp_path / "full.parquet"), str(tmp_path / "unif.parquet")
    duckquash.sample(small, "small", 500, seed=2, into="unif")
    small.execute(f"COPY small TO '{full}' (FORMAT PARQUET)")
    small.execute(f"COPY unif TO '{unif}' (FORMAT PARQUET)")
    assert main(["evaluate", full, "--formula", FORMULA, "--reduced", f"uniform 500={unif}", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method |") and "| uniform 500 | 500 | 10.000 |" in out
    assert main(["evaluate", full, "--formula", FORMULA, "--reduced", "nolabel"]) == 2
    assert "LABEL=SOURCE" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "fig.png")
