"""Command line: files and database tables in and out, exit codes, messages."""
import subprocess
import sys

import duckdb
import pytest

from duckquash.frontends.cli import main


def test_parquet_to_parquet_and_summary(parquet, tmp_path, capsys, small_df):
    out = str(tmp_path / "out.parquet")
    assert main(["squash", parquet, "--categorical", "a1,a2", "--quantitative", "x1,x2", "-o", out]) == 0
    err = capsys.readouterr().err
    assert "reduction" in err and "momentize" in err
    n, w = duckdb.connect().execute(f"SELECT count(*), sum(weight) FROM '{out}'").fetchall()[0]
    assert n < len(small_df) and w == pytest.approx(len(small_df))
    assert main(["squash", parquet, "--categorical", "a1", "-o", out]) == 2  # exists, no --replace
    assert "already exists" in capsys.readouterr().err
    assert main(["squash", parquet, "--categorical", "a1", "-o", out, "--replace", "--quiet"]) == 0


def test_database_table_in_and_out(parquet, tmp_path):
    db = str(tmp_path / "w.duckdb")
    con = duckdb.connect(db)
    con.execute(f"CREATE TABLE calls AS FROM '{parquet}'")
    con.close()
    assert main(["squash", f"{db}:calls", "--categorical", "a1", "--quantitative", "x1,x3",
                 "--method", "datasphere", "-o", f"{db}:calls_sq", "--quiet"]) == 0
    assert duckdb.connect(db).execute("SELECT count(*) FROM calls_sq").fetchall()[0][0] > 0


def test_errors_exit_nonzero_and_leave_nothing(parquet, tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert main(["squash", parquet, "--categorical", "a1", "--quantitative", "zz", "-o", str(out)]) == 2
    assert "unknown column" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "in.parquet"]
    assert main(["squash", str(tmp_path / "missing.parquet"), "--categorical", "a1", "-o", str(out)]) == 2


def test_entry_point_version_and_help():
    r = subprocess.run([sys.executable, "-m", "duckquash", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("duckquash ")
    r = subprocess.run([sys.executable, "-m", "duckquash", "squash", "--help"], capture_output=True, text=True)
    assert "--categorical" in r.stdout
