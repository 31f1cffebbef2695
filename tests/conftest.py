from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest


def paper_like(n: int, seed: int = 1) -> pd.DataFrame:
    """Two 3-level categoricals, a binary response, five skewed correlated continuous variables."""
    rng = np.random.default_rng(seed)
    a1, a2 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    g = rng.multivariate_normal(np.zeros(5), 0.5 * np.ones((5, 5)) + 0.5 * np.eye(5), n)
    x = np.exp(0.5 * g)
    x[:, 1] = 3 * x[:, 1] + 1
    x[:, 3] = g[:, 3] ** 2
    eta = -1 + 0.3 * a1 - 0.2 * a2 + x @ np.array([0.4, -0.1, 0.2, -0.3, 0.1])
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(1, 6)])
    df["a1"], df["a2"] = a1, a2
    df["defected"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    return df


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


@pytest.fixture(scope="session")
def small_df() -> pd.DataFrame:
    return paper_like(5_000, seed=3)


@pytest.fixture
def small(con, small_df):
    con.register("small_df_view", small_df)
    con.execute("CREATE TABLE small AS SELECT * FROM small_df_view")
    con.unregister("small_df_view")
    return con


@pytest.fixture
def parquet(small_df, tmp_path):
    """small_df as a Parquet file (the command line's input)."""
    con = duckdb.connect()
    con.register("df", small_df)
    path = str(tmp_path / "in.parquet")
    con.execute(f"COPY df TO '{path}' (FORMAT PARQUET)")
    con.close()
    return path
