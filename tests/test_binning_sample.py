"""Group's sample: the hash-filtered query returns exactly the rows of the full top-k by hash."""
import pytest

from duckquash.ds.binning import draw_sample, sample_sql
from duckquash.io.source import resolve
from duckquash.ds.spec import SquashSpec


@pytest.mark.parametrize("values", ["(i % 1000) / 7.0", "hash(i) / 1e15"], ids=["duplicated rows", "distinct rows"])
@pytest.mark.parametrize("sample_size", [100, 5_000, 40_000])
def test_filtered_sample_equals_full_top_k(con, values, sample_size):
    con.execute(f"CREATE TABLE t AS SELECT (i % 7)::INT AS a, {values} AS x FROM range(50000) r(i)")
    spec = SquashSpec(("a",), ("x",), sample_size=sample_size, seed=5)
    src = resolve(con, "t")
    full = con.sql(sample_sql(src, spec)).to_arrow_table()
    if sample_size == 100:  # the filter is really applied here
        assert "WHERE" in sample_sql(src, spec, 50000)
    assert full.num_rows == sample_size
    assert draw_sample(con, src, spec, 50000).equals(full)
