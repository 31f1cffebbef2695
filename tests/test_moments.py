"""Momentize: SQL power sums equal numpy's on the same standardised values; sums are exact to rounding."""
import numpy as np

from duckquash._binning import fit_binning
from duckquash._moments import N_COL, exponents, moment_col, momentize
from duckquash._source import resolve
from duckquash._spec import SquashSpec


def test_exponent_count_and_order():
    exps = exponents(5, 4)
    assert len(exps) == 125  # C(9, 4) - 1
    assert [sum(e) for e in exps] == sorted(sum(e) for e in exps)


def test_sql_moments_match_numpy(small, small_df):
    spec = SquashSpec(("a1",), ("x1", "x4"), "hyprect", 1.0, bins=2)
    src = resolve(small, "small")
    binning, extent, _ = fit_binning(small, src, spec)
    mt = momentize(small, src, binning, extent, spec.categorical, 4, 0)
    tbl = mt.table.to_pandas()
    assert tbl[N_COL].sum() == len(small_df)
    z = (small_df[["x1", "x4"]].to_numpy() - binning.center) / binning.scale
    bins = np.column_stack([np.searchsorted(np.array(binning.edges[j]), small_df[c], side="right")
                            for j, c in enumerate(["x1", "x4"])])
    for _, row in tbl.iterrows():
        mask = (small_df.a1 == row["a1"]).to_numpy() & (bins[:, 0] == row["__dq_bin_0"]) & (bins[:, 1] == row["__dq_bin_1"])
        assert mask.sum() == row[N_COL]
        for e in mt.exps:
            want = np.sum(np.prod(z[mask] ** np.array(e), axis=1))
            assert abs(row[moment_col(e)] - want) <= 1e-9 * max(1.0, abs(want)), e


def test_small_region_rows_match_in_pass_top_k(small):
    """The second pass for small regions returns exactly the rows the in-pass top-k list gave."""
    from duckquash._moments import ROWS_COL, moment_sql

    spec = SquashSpec(("a1", "a2"), ("x1", "x2", "x3", "x4", "x5"), "hyprect", 1.0, bins=3)
    src = resolve(small, "small")
    binning, extent, _ = fit_binning(small, src, spec)
    in_pass = small.sql(moment_sql(src, binning, extent, spec.categorical, 4, 12)[0]).to_arrow_table()
    table = momentize(small, src, binning, extent, spec.categorical, 4, 12).table
    n = table.column(N_COL).to_numpy()
    assert 0 < (n <= 12).sum() < len(n)
    want, got = in_pass.column(ROWS_COL).to_pylist(), table.column(ROWS_COL).to_pylist()
    for i in range(len(n)):
        assert got[i] == (want[i] if n[i] <= 12 else None)
    assert table.drop([ROWS_COL]).equals(in_pass.drop([ROWS_COL]))


def test_moment_parts_follow_the_memory_limit(con):
    from duckquash._moments import moment_parts

    con.execute("SET threads = 2")
    con.execute("SET memory_limit = '1GB'")
    assert moment_parts(con, 3_000, 137) == 1
    assert 2 <= moment_parts(con, 170_000, 137) <= 4  # 170k regions x 137 sums: about 1.5 GB of state
    assert moment_parts(con, 10**9, 137) == 64


def test_moment_pass_split_by_region_gives_the_same_squash(small, monkeypatch):
    """When the regions' sum states would not fit the memory limit the pass runs in parts; same result."""
    import duckquash
    from duckquash import _moments, _views

    args = dict(categorical=["a1", "defected"], quantitative=["x1", "x2", "x4"], bins=4)
    one = duckquash.squash(small, "small", into="one", **args)
    m1 = duckquash.materialize(small, "v1", "small", **args)
    for module in (_moments, _views):
        monkeypatch.setattr(module, "moment_parts", lambda *a: 3)
    split = duckquash.squash(small, "small", into="split", **args)
    assert split.report.moments.table.equals(one.report.moments.table)
    assert small.sql("SELECT * FROM one").fetchall() == small.sql("SELECT * FROM split").fetchall()
    m2 = duckquash.materialize(small, "v2", "small", **args)
    q = "SELECT * EXCLUDE (__dq_region) FROM {} ORDER BY ALL"
    assert small.sql(q.format("v1__moments")).fetchall() == small.sql(q.format("v2__moments")).fetchall()
    assert m1.n_points == m2.n_points
