"""Every bad input: a clear error naming the problem, and no output left behind."""
import pytest

import duckquash


def tables(con):
    return sorted(r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall())


CASES = [
    (dict(categorical=["a1"], quantitative=["nope"]), duckquash.InputError, "unknown column"),
    (dict(categorical=["a1"], quantitative=["a1", "x1"]), duckquash.InputError, "both categorical and quantitative"),
    (dict(categorical=["a1"], quantitative=["label"]), duckquash.InputError, "must be numeric"),
    (dict(categorical=["a1"], quantitative=["x1"], alpha=-1), duckquash.InputError, "alpha"),
    (dict(categorical=["a1"], quantitative=["x1"], method="spheres"), duckquash.InputError, "unknown method"),
    (dict(categorical=["a1"], quantitative=["x1"], bins=0), duckquash.InputError, "bins"),
    (dict(categorical=[], quantitative=[]), duckquash.InputError, "nothing to squash"),
    (dict(categorical=["id"], quantitative=["x1"]), duckquash.InputError, "would not shrink"),
]


@pytest.mark.parametrize("kwargs,error,message", CASES, ids=[c[2] for c in CASES])
def test_bad_arguments(small, kwargs, error, message):
    small.execute("ALTER TABLE small ADD COLUMN label VARCHAR DEFAULT 'z'")
    small.execute("ALTER TABLE small ADD COLUMN id BIGINT")
    small.execute("UPDATE small SET id = rowid")
    before = tables(small)
    with pytest.raises(error, match=message):
        duckquash.squash(small, "small", into="out", **kwargs)
    assert tables(small) == before


def test_empty_table(con):
    con.execute("CREATE TABLE e (a INT, x DOUBLE)")
    with pytest.raises(duckquash.InputError, match="empty"):
        duckquash.squash(con, "e", categorical=["a"], quantitative=["x"], into="out")
    assert tables(con) == ["e"]


@pytest.mark.parametrize("source", ["no_such_table", "/no/such/file.parquet", "/no/such/dir/*.csv"])
def test_missing_source(con, source):
    with pytest.raises(duckquash.SourceNotFoundError):
        duckquash.squash(con, source, categorical=["a"], into="out")
    assert tables(con) == []


def test_output_taken(small):
    small.execute("CREATE TABLE out (keep INT)")
    with pytest.raises(duckquash.OutputExistsError, match="already exists"):
        duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1"], into="out")
    assert [d[0] for d in small.sql("SELECT * FROM out").description] == ["keep"]


def test_infinite_values_named(con):
    con.execute("CREATE TABLE t AS SELECT i % 2 AS a, CASE WHEN i = 5 THEN 'inf'::DOUBLE ELSE i END AS \"big x\" "
                "FROM range(100) r(i)")
    with pytest.raises(duckquash.InputError, match="big x.*infinite"):
        duckquash.squash(con, "t", categorical=["a"], quantitative=["big x"], into="out")
    assert tables(con) == ["t"]


def test_reserved_and_clashing_weight_names(small):
    with pytest.raises(duckquash.InputError, match="reserved"):
        duckquash.squash(small, "small", categorical=["__dq_x"], into="out")
    with pytest.raises(duckquash.InputError, match="weight column name"):
        duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1"], weight="x1", into="out")


@pytest.mark.parametrize("sample_size", [100_000, 500], ids=["exact", "estimated"])
def test_high_cardinality_refused_before_moment_pass(small, monkeypatch, sample_size):
    """A near-unique categorical key is refused from the sample, before the moment pass runs."""
    import duckquash.ds.pipeline as pipeline

    def no_moment_pass(*args, **kwargs):
        raise AssertionError("the moment pass ran")

    monkeypatch.setattr(pipeline, "momentize", no_moment_pass)
    small.execute("ALTER TABLE small ADD COLUMN id BIGINT")
    small.execute("UPDATE small SET id = rowid")
    with pytest.raises(duckquash.InputError, match=r"would not shrink .*5,000 rows hold .*distinct combinations"):
        duckquash.squash(small, "small", categorical=["id"], quantitative=["x1"], into="out", sample_size=sample_size)
    assert tables(small) == ["small"]


def test_pairs_not_refused_early(small):
    """Each id value twice (C = N/2): the sample estimate is below 2N, so no early refusal."""
    from duckquash.ds.binning import fit_binning
    from duckquash.io.source import resolve
    from duckquash.ds.spec import SquashSpec
    from duckquash.ds.pipeline import predict_no_shrink

    small.execute("ALTER TABLE small ADD COLUMN id BIGINT")
    small.execute("UPDATE small SET id = rowid // 2")
    spec = SquashSpec(("id",), ("x1",), sample_size=1000)
    _, extent, sample, _, _ = fit_binning(small, resolve(small, "small"), spec)
    assert sample.num_rows == 1000 and extent.n_rows == 5000
    assert predict_no_shrink(sample, spec.categorical, extent.n_rows) is None
    assert predict_no_shrink(sample.slice(0, 0), spec.categorical, extent.n_rows) is None


def test_no_shrink_backstop_after_generate(small):
    """C = N/2 passes the early check; fine bins then split the pairs, and the exact check refuses."""
    small.execute("ALTER TABLE small ADD COLUMN id BIGINT")
    small.execute("UPDATE small SET id = rowid // 2")
    with pytest.raises(duckquash.InputError, match=r"would not shrink .*pseudo-points for 5,000 rows"):
        duckquash.squash(small, "small", categorical=["id"], quantitative=["x1"], into="out", bins=200)
    assert tables(small) == ["small"]
