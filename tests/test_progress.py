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


def test_generate_progress_counts_every_region(small, capsys):
    sq = duckquash.squash(small, "small", categorical=["a1"], quantitative=["x1", "x2"], into="out2", progress=True)
    err = capsys.readouterr().err  # stderr is not a terminal here: one line per stage
    line = [ln for ln in err.splitlines() if ln.startswith("generate:")]
    assert line and line[0].endswith(f"({sq.n_regions:,} regions)")


@pytest.mark.parametrize("threads", [1, 2])
def test_solver_reports_each_region_once(threads):
    import numpy as np

    from duckquash.ds import solver

    rng = np.random.default_rng(3)
    n_reg, d = 40, 2
    lo, hi = np.full((n_reg, d), -2.0), np.full((n_reg, d), 2.0)
    lo[0] = hi[0] = 0.5  # a constant region: solved without the LM
    mean, cov = np.zeros((n_reg, d)), np.tile(np.eye(d) * 0.5, (n_reg, 1, 1))
    mean[0], cov[0] = 0.5, 0.0
    samples = [rng.uniform(-1, 1, (30, d)) for _ in range(n_reg)]
    told = []
    out = solver.solve(np.full(n_reg, 100), lo, hi, mean, cov, {}, np.full(n_reg, 5), samples, threads=threads,
                       advance=told.append)
    assert sum(told) == n_reg and all(k > 0 for k in told[1:])
    assert len(np.unique(out[2])) == n_reg
