"""A region the solver cannot match is answered by its own rows, read back from the source: never a wrong region."""
import duckdb
import numpy as np
import pytest

import duckquash
import duckquash.ds.generate as gen


@pytest.mark.parametrize("method", ["adaptive", "hyprect"])
def test_inexact_regions_get_their_rows(monkeypatch, method):
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT (i % 2)::INTEGER AS a, (hash(i) % 1000)::DOUBLE AS x, "
                "(hash(i * 7) % 97)::DOUBLE AS y, CASE WHEN i % 50 = 0 THEN NULL ELSE (hash(i * 3) % 13)::DOUBLE END AS z "
                "FROM range(20000) r(i)")
    real = gen.solver.solve
    spoiled = []

    def spoil(n, *args, **kwargs):  # the two largest regions come back wrong and flagged, as a failing solve would
        pts, w, rid, diag = real(n, *args, **kwargs)
        for r in np.argsort(-np.asarray(n))[:2]:
            pts[rid == r] += 0.5
            diag["method"][r] = "inexact"
            spoiled.append(int(n[r]))
        return pts, w, rid, diag

    monkeypatch.setattr(gen.solver, "solve", spoil)
    kw = {"bins": 2} if method == "hyprect" else {}
    sq = duckquash.squash(con, "t", categorical=["a"], quantitative=["x", "y", "z"], **kw)
    assert spoiled and min(spoiled) > 64  # larger than the rows a region carries along in the moment pass
    check = sq.verify()
    assert check.ok, check.summary()
    kinds = sq.report.regions.column("kind").to_pylist()
    assert "inexact" not in kinds and kinds.count("rows") >= 2
    n, w = con.execute(f"SELECT count(*), sum(weight) FROM {sq.table}").fetchone()
    assert w == pytest.approx(20000) and n >= sum(spoiled)
    assert "miss their means" not in sq.summary()
