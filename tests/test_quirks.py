"""Generate never emits a wrong region, on tables with the quirks of real data.

Every check goes through ``SquashResult.verify()``: one fresh SQL pass over the source recomputes
each region's and cell's count, means and covariances (not the solver's own diagnostics).
"""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

import duckquash

N = 6_000


def _table(con: duckdb.DuckDBPyConnection, df: pd.DataFrame) -> str:
    con.register("quirk_df", df)
    con.execute("CREATE OR REPLACE TABLE quirks AS SELECT * FROM quirk_df")
    con.unregister("quirk_df")
    return "quirks"


def _base(rng: np.random.Generator, n: int = N) -> pd.DataFrame:
    return pd.DataFrame({"a": rng.integers(0, 3, n), "b": rng.integers(0, 2, n)})


def _quirk(name: str, rng: np.random.Generator) -> tuple[pd.DataFrame, list[str]]:
    df = _base(rng)
    g = rng.standard_normal((N, 4))
    if name == "point_mass":  # 0 in 90% of rows, lognormal elsewhere
        df["x"] = np.where(rng.random(N) < 0.9, 0.0, np.exp(g[:, 0]))
        df["y"] = g[:, 1]
    elif name == "integer_codes":  # 0/1, 1..5 ratings, 0..100 massed at both ends
        df["x"] = rng.integers(0, 2, N).astype(float)
        df["y"] = rng.integers(1, 6, N).astype(float)
        df["z"] = np.clip(np.round(rng.normal(50, 60, N)), 0, 100)
    elif name == "constant_columns":  # constant overall, constant within a cell, near-constant
        df["x"] = 7.0
        df["y"] = np.where(df.a == 1, 3.0, g[:, 0])
        df["z"] = 1e6 + 1e-7 * g[:, 1]
    elif name == "heavy_tails":  # Student-t(2) and a Pareto column
        df["x"] = rng.standard_t(2, N)
        df["y"] = (1 - rng.random(N)) ** -1.5
    elif name == "nan_and_null":  # NaN and NULL in several columns, data-error zeros
        x = np.exp(g[:, 0])
        x[rng.random(N) < 0.1] = np.nan
        y = g[:, 1].copy()
        y[rng.random(N) < 0.05] = 0.0  # data-error zeros
        df["x"], df["y"] = x, pd.array(np.where(rng.random(N) < 0.05, None, y), dtype="Float64")
    elif name == "huge_magnitude":  # one 1e200 among ordinary values, a column at 1e-200
        x = g[:, 0].copy()
        x[17] = 1e200
        df["x"], df["y"] = x, 1e-200 * np.exp(g[:, 1])
    elif name == "duplicated_rows":
        base = np.round(g[: N // 20, :2], 1)
        pick = rng.integers(0, len(base), N)
        df["x"], df["y"] = base[pick, 0], base[pick, 1]
    elif name == "q1":
        df["x"] = np.exp(g[:, 0])
    elif name == "q8":
        z = rng.standard_normal((N, 8)) @ (0.4 * np.ones((8, 8)) + 0.6 * np.eye(8))
        for j in range(8):
            df[f"x{j}"] = np.exp(z[:, j] / 2) if j % 2 else z[:, j]
    elif name == "q16":
        z = rng.standard_normal((N, 16))
        for j in range(16):
            df[f"x{j}"] = z[:, j] + 0.3 * z[:, (j + 1) % 16]
    else:
        raise ValueError(name)
    return df, [c for c in df.columns if c not in ("a", "b")]


QUIRKS = ["point_mass", "integer_codes", "constant_columns", "heavy_tails", "nan_and_null", "huge_magnitude",
          "duplicated_rows", "q1", "q8", "q16"]


@pytest.mark.parametrize("method", ["adaptive", "hyprect"])
@pytest.mark.parametrize("quirk", QUIRKS)
def test_every_region_exact(con, quirk, method):
    if method == "hyprect" and quirk in ("q8", "q16"):
        pytest.skip("HypRect crosses every cell with 3^Q bins: more regions than rows at Q >= 8 (refused)")
    df, quant = _quirk(quirk, np.random.default_rng(len(quirk)))
    src = _table(con, df)
    sq = duckquash.squash(con, src, categorical=["a", "b"], quantitative=quant, method=method, into="out")
    v = sq.verify()
    assert v.ok, v.summary()
    w, n_bad = con.execute("SELECT sum(weight), count(*) FILTER (WHERE NOT (weight > 0)) FROM out").fetchall()[0]
    assert n_bad == 0 and w == pytest.approx(N, rel=1e-12)
    # no column lost: values wherever the rows have them
    for c in quant:
        have = f'SELECT count(*) FILTER (WHERE "{c}" IS NOT NULL AND NOT isnan("{c}")) FROM '
        rows_have, out_have = (con.execute(have + t).fetchall()[0][0] for t in ("quirks", "out"))
        assert (rows_have > 0) == (out_have > 0), c


def test_verify_catches_a_wrong_table(con):
    """The check is not vacuous: moving one point, or one weight, is reported."""
    df, quant = _quirk("q1", np.random.default_rng(0))
    src = _table(con, df)
    sq = duckquash.squash(con, src, categorical=["a", "b"], quantitative=quant, into="out")
    assert sq.verify().ok
    con.execute("UPDATE out SET x = x * 1.001 WHERE rowid = 3")
    assert not sq.verify().ok and sq.verify().worst_mean_error > 1e-6
    con.execute("UPDATE out SET x = x / 1.001 WHERE rowid = 3")
    con.execute("UPDATE out SET weight = weight + 1 WHERE rowid = 5")
    assert not sq.verify().ok and sq.verify().worst_count_error > 1e-6
