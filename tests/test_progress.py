"""Progress: DuckDB's whole-query percentage is mapped to the scan pipeline's own progress."""
import pytest

import duckquash
from duckquash.io.progress import phase_of


def test_phase_of_rescales_the_scan_pipeline():
    assert phase_of(16.5, 1 / 3) == ("scan", pytest.approx(49.5))
    assert phase_of(32.0, 1 / 3)[0] == "scan"
    assert phase_of(34.0, 1 / 3) == ("finish", 100.0)
    assert phase_of(99.0, 1.0) == ("scan", 99.0)
    assert phase_of(-1.0, 1 / 2) == ("start", 0.0)


def test_squash_with_progress_shows_stages(small, capsys):
    sq = duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1", "x2"], into="out", progress=True)
    assert sq.n_rows == 5000
    err = capsys.readouterr().err
    assert "generate" in err
