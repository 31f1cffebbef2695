"""Squash a pandas DataFrame (or a Parquet file) inside DuckDB, then fit a logistic regression on the
squashed table, with duckquash.glm and with statsmodels.

Run:  python examples/fit_on_squashed.py   (needs statsmodels: pip install statsmodels)
The weights are frequency weights summing to N: pass them as ``freq_weights``. The data are
simulated here with numpy (500,000 rows shaped like the paper's: two three-level categoricals,
five skewed correlated variables, a binary response).
"""
import duckdb
import numpy as np
import pandas as pd
import statsmodels.api as sm

import duckquash

rng = np.random.default_rng(0)
n = 500_000
g = rng.multivariate_normal(np.zeros(5), 0.5 * np.ones((5, 5)) + 0.5 * np.eye(5), n)
df = pd.DataFrame(np.exp(0.5 * g), columns=[f"x{i}" for i in range(1, 6)])
df["x2"] = 3 * df["x2"] + 1
df["x4"] = g[:, 3] ** 2
df["a1"], df["a2"] = rng.integers(0, 3, n), rng.integers(0, 3, n)
eta = -1 + 0.3 * df.a1 - 0.2 * df.a2 + df[["x1", "x2", "x3", "x4", "x5"]].to_numpy() @ [0.4, -0.1, 0.2, -0.3, 0.1]
df["defected"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)

con = duckdb.connect()
# the DataFrame itself is the source (a Parquet path, glob, table name or SELECT works the same way)
sq = duckquash.squash(con, df, categorical=["a1", "a2", "defected"], quantitative=["x1", "x2", "x3", "x4", "x5"],
                      into="calls_sq")
print(sq.summary())

formula = "defected ~ C(a1) + C(a2) + x1 + x2 + x3 + x4 + x5"
full = duckquash.glm(con, df, formula, "binomial")
res = duckquash.glm(con, "calls_sq", formula, "binomial")  # the weight column is used automatically
print(res.summary())
z = (res.params - full.params) / full.bse  # Series labelled by term
print("\nz = (beta_squashed - beta_full) / SE_full by term:\n" + z.round(4).to_string())

# statsmodels on the squashed rows, with labelled columns
d = sq.relation.df()  # small: M rows, not N
X = pd.DataFrame({"Intercept": 1.0, **{f"a{j}={k}": (d[f"a{j}"] == k).astype(float) for j in (1, 2) for k in (1, 2)},
                  **{f"x{i}": d[f"x{i}"] for i in range(1, 6)}})
fit = sm.GLM(d.defected, X, family=sm.families.Binomial(), freq_weights=d.weight).fit()
print(fit.summary())
