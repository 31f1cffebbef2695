"""Momentize: SQL power sums equal numpy's on the same standardised values; sums are exact to rounding."""
import numpy as np

import dataclasses

from duckquash.ds import pipeline
from duckquash.ds.moments import exponents, keyed_rows_sql
from duckquash.ds.plan import plan_from_source
from duckquash.ds.spec import SquashSpec
from duckquash.io.source import resolve
from duckquash.sql.build import key_match
from duckquash.sql.names import N_COL, ROWS_COL, moment_col, value_col


def test_exponent_count_and_order():
    exps = exponents(5, 4)
    assert len(exps) == 125  # C(9, 4) - 1
    assert [sum(e) for e in exps] == sorted(sum(e) for e in exps)


def test_sql_moments_match_numpy(small, small_df):
    spec = SquashSpec(("a1",), ("x1", "x4"), "hyprect", 1.0, bins=2)
    src = resolve(small, "small")
    plan, _ = plan_from_source(small, src, spec, reusable=False)
    binning = plan.binning
    mt = pipeline.read_moments(small, plan, f"({plan.moment_sql(src.sql)})", rows=False)
    tbl = mt.table.to_pandas()
    assert tbl[N_COL].sum() == len(small_df)
    x = small_df[["x1", "x4"]].to_numpy()
    mid, half = binning.frames(mt.table.select(list(mt.key_columns)))  # each region's box units
    bins = np.column_stack([np.searchsorted(np.array(binning.edges[j]), small_df[c], side="right")
                            for j, c in enumerate(["x1", "x4"])])
    for i, row in tbl.iterrows():
        mask = (small_df.a1 == row["a1"]).to_numpy() & (bins[:, 0] == row["__dq_bin_0"]) & (bins[:, 1] == row["__dq_bin_1"])
        assert mask.sum() == row[N_COL]
        z = (x - mid[i]) / half[i]
        for e in mt.exps:
            want = np.sum(np.prod(z[mask] ** np.array(e), axis=1))
            assert abs(row[moment_col(e)] - want) <= 1e-9 * max(1.0, abs(want)), e


def test_small_region_rows_match_in_pass_top_k(small):
    """The second pass for small regions returns exactly the rows the in-pass top-k list gave."""
    spec = SquashSpec(("a1", "a2"), ("x1", "x2", "x3", "x4", "x5"), "hyprect", 1.0, bins=3)
    src = resolve(small, "small")
    plan, _ = plan_from_source(small, src, spec, reusable=False)
    plan = dataclasses.replace(plan, fetch_rows=12)
    keys = ", ".join(f'"{k}"' for k in plan.key_columns)
    v = ", ".join(value_col(j) for j in range(5))
    lists = (f"SELECT {keys}, min([{v}], 12) AS {ROWS_COL} "
             f"FROM ({keyed_rows_sql(src.sql, plan.binning, spec.categorical)}) GROUP BY {keys}")
    in_pass_sql = (f"(SELECT m.*, l.{ROWS_COL} FROM ({plan.moment_sql(src.sql, rows=False)}) m "
                   f"JOIN ({lists}) l ON {key_match('m', 'l', plan.key_columns)})")
    in_pass = pipeline.read_moments(small, plan, in_pass_sql, rows=True).table
    name = pipeline.momentize(small, plan, src.sql, n_regions=1000)
    table = pipeline.read_moments(small, plan, f'temp."{name}"', rows=True).table
    n = table.column(N_COL).to_numpy()
    assert 0 < (n <= 12).sum() < len(n)
    want, got = in_pass.column(ROWS_COL).to_pylist(), table.column(ROWS_COL).to_pylist()
    for i in range(len(n)):
        assert got[i] == (want[i] if n[i] <= 12 else None)
    assert table.drop([ROWS_COL]).equals(in_pass.drop([ROWS_COL]))


def test_moment_parts_follow_the_memory_limit(con):
    from duckquash.ds.moments import moment_parts

    con.execute("SET threads = 2")
    con.execute("SET memory_limit = '1GB'")
    assert moment_parts(con, 3_000, 137) == 1
    assert 2 <= moment_parts(con, 170_000, 137) <= 4  # 170k regions x 137 sums: about 1.5 GB of state
    assert moment_parts(con, 10**9, 137) == 64


def test_moment_pass_split_by_region_gives_the_same_squash(small, monkeypatch):
    """When the regions' sum states would not fit the memory limit the pass runs in parts; same result."""
    import duckquash

    args = dict(categorical=["a1", "defected"], quantitative=["x1", "x2", "x4"], bins=4)
    one = duckquash.squash(small, "small", into="one", **args)
    m1 = duckquash.materialize(small, "v1", "small", **args)
    monkeypatch.setattr(pipeline, "moment_parts", lambda *a: 3)  # squash and views both momentize here
    split = duckquash.squash(small, "small", into="split", **args)
    assert split.report.moments.table.equals(one.report.moments.table)
    assert small.sql("SELECT * FROM one").fetchall() == small.sql("SELECT * FROM split").fetchall()
    m2 = duckquash.materialize(small, "v2", "small", **args)
    q = "SELECT * EXCLUDE (__dq_region) FROM {} ORDER BY ALL"
    assert small.sql(q.format("v1__moments")).fetchall() == small.sql(q.format("v2__moments")).fetchall()
    assert m1.n_points == m2.n_points
