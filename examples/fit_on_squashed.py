"""Squash a Parquet file inside DuckDB, then fit a logistic regression on the squashed table.

Run:  python examples/fit_on_squashed.py   (needs statsmodels: pip install statsmodels)
The weights are frequency weights summing to N: pass them as ``freq_weights``.
"""
import duckdb
import numpy as np
import statsmodels.api as sm

import duckquash
from duckquash.frontends.demo import simulate  # the demo's data generator, for a self-contained example

con = duckdb.connect()
simulate(con, 500_000)
con.execute("COPY calls TO '/tmp/duckquash_example.parquet' (FORMAT PARQUET)")

sq = duckquash.squash(con, "/tmp/duckquash_example.parquet", categorical=["a1", "a2", "defected"],
                      quantitative=["x1", "x2", "x3", "x4", "x5"], into="calls_sq")
print(sq.summary())

df = sq.relation.df()  # small: M rows, not N
X = np.column_stack([np.ones(len(df))] + [(df[a] == k).astype(float) for a in ("a1", "a2") for k in (1, 2)]
                    + [df[f"x{i}"] for i in range(1, 6)])
fit = sm.GLM(df.defected, X, family=sm.families.Binomial(), freq_weights=df.weight).fit()
print(fit.summary())
