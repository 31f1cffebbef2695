"""Command line beyond squash: `sample`, `sql`, defaults in --help, CLI-spelled errors, log-friendly progress."""
import os

import duckdb
import pytest

from duckquash.frontends.cli import main


def test_sample_uniform_and_osmac_then_evaluate(parquet, tmp_path, capsys, small_df):
    """The README's evaluate example runs end to end from the command line."""
    unif, osm, sq = (str(tmp_path / f) for f in ("u.parquet", "o.parquet", "sq.parquet"))
    assert main(["sample", parquet, "--size", "300", "-o", unif, "--seed", "2"]) == 0
    n, w = duckdb.connect().execute(f"SELECT count(*), sum(weight) FROM '{unif}'").fetchone()
    assert n == 300 and w == pytest.approx(len(small_df))
    assert main(["sample", parquet, "--size", "300", "-o", osm, "--method", "osmac",
                 "--formula", "defected ~ x1 + x2", "--quiet"]) == 0
    assert duckdb.connect().execute(f"SELECT sum(weight) FROM '{osm}'").fetchone()[0] == pytest.approx(len(small_df))
    assert main(["squash", parquet, "--categorical", "a1,defected", "--quantitative", "x1,x2", "-o", sq, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", parquet, "--formula", "defected ~ x1 + x2", "--reduced", f"sq={sq}", f"unif={unif}",
                 f"osmac={osm}"]) == 0
    out = capsys.readouterr().out
    assert "sq" in out and "unif" in out and "osmac" in out


def test_sample_refusals_speak_cli(parquet, tmp_path, capsys):
    out = str(tmp_path / "u.parquet")
    assert main(["sample", parquet, "--size", "10", "-o", out, "--quiet"]) == 0
    assert main(["sample", parquet, "--size", "10", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--replace" in err and "replace=True" not in err
    db = str(tmp_path / "new.duckdb")
    assert main(["sample", parquet, "--size", "100000000", "-o", f"{db}:s"]) == 2  # more than the rows
    assert "more than" in capsys.readouterr().err
    assert not os.path.exists(db)  # the database file the failed run created is removed


def test_sql_one_shot_and_file(tmp_path, capsys):
    db = str(tmp_path / "w.duckdb")
    assert main(["sql", db, "-c", "CREATE TABLE t AS SELECT range % 3 AS a, (range * 7 % 101)::DOUBLE AS x "
                 "FROM range(3000); CREATE TABLE s AS FROM squash('t', categorical := ['a'], quantitative := ['x'], "
                 "size := 60); SELECT count(*) AS n, sum(weight) AS w FROM s;"]) == 0
    out = capsys.readouterr().out
    assert "3000" in out and "Count" not in out  # CREATE ... AS prints nothing, as in DuckDB's shell
    n, w = duckdb.connect(db).execute("SELECT count(*), sum(weight) FROM s").fetchone()
    assert 48 <= n <= 72 and w == pytest.approx(3000)
    script = tmp_path / "q.sql"
    script.write_text("-- a comment\nSELECT a, count(*) AS k FROM t GROUP BY a ORDER BY a;\n")
    assert main(["sql", db, "--csv", "-f", str(script), "--read-only"]) == 0
    assert capsys.readouterr().out.splitlines() == ["a,k", "0,1000", "1,1000", "2,1000"]
    assert main(["sql", db, "-c", "SELECT * FROM nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["sql", db, "-f", str(tmp_path / "missing.sql")]) == 2


def test_sql_prompt(tmp_path, monkeypatch, capsys):
    lines = iter(["SELECT 1 AS one,", " 2 AS two;", "SELECT * FROM nope;", "CALL squash('x', categorical := ['a']);",
                  ".quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["sql"]) == 0
    cap = capsys.readouterr()
    assert "one" in cap.out and "two" in cap.out
    errors = [line for line in cap.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and "nope" in errors[0] and "'x'" in errors[1]  # reported; the prompt goes on


def test_every_help_shows_defaults(capsys):
    for cmd in ("squash", "evaluate", "sample", "materialize", "refresh", "sql", "demo"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "(default:" in out, cmd
        if cmd not in ("sql", "evaluate"):  # these print their results, nothing else
            assert "--quiet" in out, cmd
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "(default: binomial)" in capsys.readouterr().out


def test_progress_without_a_terminal_is_one_line_per_stage(parquet, tmp_path, capfd):
    out = str(tmp_path / "o.parquet")
    assert main(["squash", parquet, "--categorical", "a1", "--quantitative", "x1", "-o", out]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("momentize: done in") for line in err.splitlines())


def test_demo_small(capsys):
    assert main(["demo", "--rows", "30000", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "MSE" in line and "max |z|" in line]
    assert len(lines) == 2 and "squashed (adaptive" in lines[0] and "uniform sample" in lines[1]


def test_view_summary(tmp_path):
    import duckquash

    con = duckquash.connect(str(tmp_path / "v.duckdb"))
    con.execute("CREATE TABLE t AS SELECT range % 3 AS a, (range * 7 % 101)::DOUBLE AS x FROM range(3000)")
    res = duckquash.materialize(con, "t_sq", "t", categorical=["a"], quantitative=["x"])
    text = res.summary()
    assert "3,000 rows" in text and f"{res.n_points:,} points" in text and "method adaptive" in text
    assert str(res) == text


def test_region_report_has_readable_names():
    import duckquash

    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range % 3 AS a, (range * 7 % 101)::DOUBLE AS x FROM range(3000)")
    for kw, keys in (({}, ["missing", "leaf"]), ({"bins": 2}, ["bin[x]"])):
        names = duckquash.squash(con, "t", categorical=["a"], quantitative=["x"], **kw).report.regions.column_names
        assert all(k in names for k in keys) and not any(c.startswith("__dq") for c in names), names


def test_input_checked_before_output(parquet, tmp_path, capsys):
    taken = str(tmp_path / "taken.parquet")
    assert main(["sample", parquet, "--size", "5", "-o", taken, "--quiet"]) == 0
    assert main(["squash", str(tmp_path / "missing.parquet"), "--categorical", "a1", "-o", taken]) == 2
    err = capsys.readouterr().err
    assert "missing.parquet" in err and "does not exist" in err and "already exists" not in err
    assert main(["sample", str(tmp_path / "nope*.parquet"), "--size", "5", "-o", taken]) == 2
    assert "no file matches" in capsys.readouterr().err
