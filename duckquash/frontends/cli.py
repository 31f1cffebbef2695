"""Command line: a thin layer over :func:`duckquash.squash`, :func:`duckquash.evaluate` and the demo."""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import duckdb

from ..api import make_spec, squash_to_arrow
from ..baselines.sample import CRITERIA
from ..baselines.sample import METHODS as SAMPLE_METHODS
from ..ds.verify import verify
from ..errors import DuckquashError
from ..io.source import resolve
from ..io.transaction import registered
from ..io.write import (check_file_target, check_table_target, refuse_replacing_source, table_name, write_file,
                        write_table)
from ..lds.spec import FAMILIES as LDS_FAMILIES
from ..lds.spec import INITS, PROFILES
from ..lds.spec import POINTS as LDS_POINTS
from ..model.families import FAMILIES
from ..sql.quote import ident
from ..version import __version__


def _split_db(arg: str) -> tuple[str, str] | None:
    """``db.duckdb:table`` -> (database path, table); None for a plain file path."""
    head, sep, tail = arg.rpartition(":")
    if sep and head.lower().endswith((".duckdb", ".db", ".ddb")) and tail:
        return head, tail
    return None


def _ds_options(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """The squash options shared by ``squash`` and ``materialize``."""
    p.add_argument("--categorical", default="", help="comma-separated categorical columns")
    p.add_argument("--quantitative", default="", help="comma-separated numeric columns")
    p.add_argument("--method", default=None, choices=methods,
                   help="regions: adaptive (default; hyprect if --bins is given, datasphere if --layers is)")
    p.add_argument("--alpha", type=float, default=1.0, help="points per region: max(1, ceil(alpha*log2 N_r))")
    p.add_argument("--bins", type=int, default=None, help="HypRect: quantile bins per variable (default 3)")
    p.add_argument("--layers", type=int, default=None, help="Data Spheres: radius layers (default 3)")
    p.add_argument("--size", type=int, default=None,
                   help="number of pseudo-points M wanted (regions and points per region chosen to land near it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the binning sample and solver starts")
    p.add_argument("--weight", default="weight", help="name of the weight column")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="duckquash", description="Squash large tables into weighted pseudo-points.")
    ap.add_argument("--version", action="version", version=f"duckquash {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    def add_parser(*a, **k):  # every command's --help shows its defaults
        return _add(*a, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **k)

    sub.add_parser = add_parser
    sq = sub.add_parser("squash", help="squash a Parquet/CSV file or a DuckDB table",
                        description="Squash INPUT (file.parquet, file.csv, glob, or db.duckdb:table) into OUT "
                                    "(.parquet, .csv, or db.duckdb:table). Weights are frequency weights summing to N.")
    sq.add_argument("input", help="file.parquet, file.csv, glob, or db.duckdb:table")
    sq.add_argument("-o", "--output", required=True, help="file.parquet, file.csv, or db.duckdb:table")
    _ds_options(sq, methods=["adaptive", "hyprect", "datasphere", "lds"])
    sq.add_argument("--formula", help="lds: the model, e.g. 'defected ~ x1 + x2 + C(a1)'")
    sq.add_argument("--family", default="binomial", choices=list(LDS_FAMILIES), help="lds: GLM family")
    sq.add_argument("--iterations", type=int, default=1, help="lds: ILDS iterations (1 = plain LDS)")
    sq.add_argument("--init", default="sample", choices=list(INITS), help="lds: initial estimate")
    sq.add_argument("--profiles", default="auto", choices=list(PROFILES),
                    help="lds: second-order profiles where they match the exact ones (auto), or always exact")
    sq.add_argument("--refine", action="store_true", help="lds: refine pseudo-points to their clusters' summed profiles")
    sq.add_argument("--points", type=int, default=2, choices=list(LDS_POINTS),
                    help="lds: pseudo-points per cluster (2: mean +- spread along the most informative direction)")
    sq.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="lds: keep the points as built (default: calibrate them to the full-data Newton step)")
    sq.add_argument("--replace", action="store_true", help="overwrite an existing output")
    sq.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    sq.add_argument("--verify", action="store_true",
                    help="recompute every region's count, means and covariances from the input and compare "
                         "(exit status 3 when they differ)")
    ev = sub.add_parser("evaluate", help="compare model fits on reduced tables with the full-data fit",
                        description="Fit FORMULA on FULL and on every reduced table; print MSE of the standardised "
                                    "coefficient errors and prediction residuals per method. Sources are "
                                    "Parquet/CSV files or db.duckdb:table (one database file at most).")
    ev.add_argument("full", help="the full table: file.parquet, file.csv, glob, or db.duckdb:table")
    ev.add_argument("--formula", required=True, help="the model, e.g. 'defected ~ x1 + x2 + C(a1)'")
    ev.add_argument("--family", default="binomial", choices=list(FAMILIES), help="GLM family")
    ev.add_argument("--reduced", nargs="+", required=True, metavar="LABEL=SOURCE",
                    help="reduced tables to compare, e.g. sq=sq.parquet unif=u.parquet")
    ev.add_argument("--weight", default="weight", help="weight column of the reduced tables")
    ev.add_argument("--plot", help="write a PNG of the standardised errors per coefficient")
    ev.add_argument("--markdown", action="store_true", help="print a Markdown table")
    sa = sub.add_parser("sample", help="draw a weighted subsample (uniform or OSMAC), the baselines to compare with",
                        description="Draw SIZE rows of INPUT into OUT with frequency weights summing to N: a uniform "
                                    "sample (weights N/SIZE) or OSMAC's two-step optimal subsample for a logistic "
                                    "model (--formula).")
    sa.add_argument("input", help="file.parquet, file.csv, glob, or db.duckdb:table")
    sa.add_argument("-o", "--output", required=True, help="file.parquet, file.csv, or db.duckdb:table")
    sa.add_argument("--size", dest="n", type=int, required=True, help="rows to draw")
    sa.add_argument("--method", default="uniform", choices=list(SAMPLE_METHODS), help="sampling design")
    sa.add_argument("--formula", default=None, help="osmac: the logistic model the sample is optimal for")
    sa.add_argument("--family", default="binomial", choices=["binomial"], help="osmac: GLM family")
    sa.add_argument("--criterion", default="mmse", choices=list(CRITERIA), help="osmac: optimality criterion")
    sa.add_argument("--pilot", type=int, default=None, help="osmac: pilot rows (default min(max(200, 10p), SIZE/2))")
    sa.add_argument("--seed", type=int, default=0, help="the same seed draws the same rows")
    sa.add_argument("--weight", default="weight", help="name of the weight column")
    sa.add_argument("--replace", action="store_true", help="overwrite an existing output")
    sa.add_argument("--quiet", action="store_true", help="no summary")
    sl = sub.add_parser("sql", help="a SQL prompt (or -c/-f) with CALL squash(...) and squash_refresh installed",
                        description="Run SQL on DATABASE (default: in memory) with duckquash's macros installed: "
                                    "CALL squash('t', ...), squash_refresh(...). Without -c or -f, an interactive "
                                    "prompt; statements end with ';', .quit or Ctrl-D leaves.")
    sl.add_argument("database", nargs="?", default=":memory:", help="a DuckDB database file")
    sl.add_argument("-c", "--command", dest="sql", default=None, help="SQL to run, then exit")
    sl.add_argument("-f", "--file", default=None, help="a file of SQL statements to run, then exit")
    sl.add_argument("--csv", action="store_true", help="print results as CSV instead of boxes")
    sl.add_argument("--read-only", action="store_true", help="open the database read-only")
    ma = sub.add_parser("materialize", help="squash INPUT into a refreshable view db.duckdb:name",
                        description="Squash INPUT (file, glob, or db.duckdb:table in the same database) into the "
                                    "materialised view VIEW (db.duckdb:name) that 'duckquash refresh' can extend.")
    ma.add_argument("input", help="file.parquet, file.csv, glob, or db.duckdb:table of the same database")
    ma.add_argument("view", help="db.duckdb:name")
    _ds_options(ma, methods=["adaptive", "hyprect", "datasphere"])
    ma.add_argument("--replace", action="store_true", help="rebuild an existing view")
    ma.add_argument("--quiet", action="store_true", help="no summary")
    re_ = sub.add_parser("refresh", help="fold new rows into a materialised view db.duckdb:name",
                         description="Fold NEW_ROWS (file, glob, table of the same database, or db.duckdb:table) "
                                     "into the view VIEW (db.duckdb:name); only regions with new rows are re-solved.")
    re_.add_argument("view", help="db.duckdb:name")
    re_.add_argument("new_rows", help="file.parquet, file.csv, glob, table of the same database, or db.duckdb:table")
    re_.add_argument("--batch-id", default=None, help="name of the batch; a batch is never folded in twice")
    re_.add_argument("--rebin", action="store_true", help="rebuild the binning from all recorded sources")
    re_.add_argument("--quiet", action="store_true", help="no summary")
    demo = sub.add_parser("demo", help="squash simulated data and compare model fits (no data needed)")
    demo.add_argument("--rows", type=int, default=1_000_000, help="rows to simulate")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _squash(args: argparse.Namespace) -> int:
    if args.method == "lds":
        if args.categorical or args.quantitative:
            raise DuckquashError("--method lds takes its variables from --formula; drop --categorical/--quantitative")
        spec = make_spec("lds", weight=args.weight, seed=args.seed, formula=args.formula, size=args.size,
                         family=args.family, iterations=args.iterations, init=args.init, profiles=args.profiles,
                         refine=args.refine, points=args.points, calibrate=args.calibrate)
    else:
        spec = make_spec(args.method, categorical=args.categorical, quantitative=args.quantitative,
                         alpha=args.alpha, bins=args.bins, layers=args.layers, weight=args.weight, seed=args.seed,
                         size=args.size)
    con, source, db_in, db_out, same_db, created = _input_output(args)
    try:
        return _squash_run(args, spec, con, source, db_in, db_out, same_db)
    except BaseException:
        _remove_created(created, db_out)
        raise


def _open_output(args, con, source, db_in, db_out, same_db):
    """Check the output target before any expensive pass; returns the connection to write a table to."""
    if db_out is None:
        same_file = db_in is None and not glob.has_magic(args.input) and \
            os.path.abspath(args.input) == os.path.abspath(args.output)
        if same_file:
            raise DuckquashError(f"the output {args.output!r} is the input file itself; write the result elsewhere")
        check_file_target(args.output, args.replace)
        return None
    out_con = con if same_db else duckdb.connect(db_out[0])
    parts = table_name(db_out[1])
    check_table_target(out_con, parts, args.replace)
    if same_db:
        refuse_replacing_source(con, source, parts)
    return out_con


def _write_output(args, con, out_con, db_out, data) -> None:
    if db_out is None:
        write_file(con, data, args.output, args.replace)
    else:
        write_table(out_con, data, table_name(db_out[1]), args.replace)


def _squash_run(args, spec, con, source, db_in, db_out, same_db) -> int:
    out_con = None
    try:
        out_con = _open_output(args, con, source, db_in, db_out, same_db)
        t0 = time.perf_counter()
        data, report = squash_to_arrow(con, source, spec, show_progress=not args.quiet)
        t1 = time.perf_counter()
        _write_output(args, con, out_con, db_out, data)
        report.timings["write"] = time.perf_counter() - t1
    finally:
        if out_con is not None and out_con is not con:
            out_con.close()
    if not args.quiet:
        print(f"squashed {args.input} -> {args.output} in {time.perf_counter() - t0:.2f}s", file=sys.stderr)
        print(report.summary(), file=sys.stderr)
    if args.verify:
        plan = getattr(report, "plan", None)
        if plan is None:
            raise DuckquashError("--verify checks data squashing (adaptive, hyprect, datasphere), not --method lds")
        src = resolve(con, source)
        try:
            with registered(con, data, "verify") as view:
                check = verify(con, plan, src, ident(view), plan.spec.weight)
        finally:
            src.close()
        print(check.summary(), file=sys.stderr)
        if not check.ok:
            return 3
    return 0


def _input_output(args):
    """(connection, source, db_in, db_out, same_db, created) for a command reading INPUT and writing -o OUT."""
    db_in, db_out = _split_db(args.input), _split_db(args.output)
    same_db = db_in is not None and db_out is not None and os.path.abspath(db_in[0]) == os.path.abspath(db_out[0])
    if db_in is not None:
        if not os.path.exists(db_in[0]):
            raise DuckquashError(f"database file {db_in[0]!r} does not exist")
        con, source = duckdb.connect(db_in[0], read_only=not same_db), db_in[1]
    else:
        _check_input_file(args.input)
        con, source = duckdb.connect(), args.input
    _check_folder(db_out[0] if db_out is not None else args.output)
    created = db_out is not None and not os.path.exists(db_out[0])
    return con, source, db_in, db_out, same_db, created


def _sample(args: argparse.Namespace) -> int:
    from ..baselines.sample import draw

    return _with_output(args, lambda con, source: draw(
        con, source, args.n, method=args.method, formula=args.formula, family=args.family, seed=args.seed,
        weight=args.weight, criterion=args.criterion, pilot=args.pilot)[0], "sampled")


def _with_output(args, make, verb: str) -> int:
    """Open INPUT, check -o OUT, ``make(con, source)`` an Arrow table, write it whole; a database file
    this run created is removed if the run fails."""
    con, source, db_in, db_out, same_db, created = _input_output(args)
    try:
        out_con = _open_output(args, con, source, db_in, db_out, same_db)
        try:
            t0 = time.perf_counter()
            data = make(con, source)
            _write_output(args, con, out_con, db_out, data)
        finally:
            if out_con is not None and out_con is not con:
                out_con.close()
    except BaseException:
        con.close()
        _remove_created(created, db_out)
        raise
    con.close()
    if not args.quiet:
        print(f"{verb} {args.input} -> {args.output}: {data.num_rows:,} rows in {time.perf_counter() - t0:.2f}s",
              file=sys.stderr)
    return 0


def _remove_created(created: bool, db_out) -> None:
    if created:  # a database file this run created is removed with the failed run
        for p in (db_out[0], db_out[0] + ".wal"):
            if os.path.exists(p):
                os.unlink(p)


def _evaluate(args: argparse.Namespace) -> None:
    from ..baselines.evaluate import evaluate

    db, reduced = None, {}
    for item in args.reduced:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise DuckquashError(f"--reduced takes LABEL=SOURCE, got {item!r}")
        reduced[label] = path
    sources = {"": args.full, **reduced}
    dbs = {os.path.abspath(d[0]) for d in map(_split_db, sources.values()) if d is not None}
    if len(dbs) > 1:
        raise DuckquashError(f"all db.duckdb:table sources must come from one database file, got {sorted(dbs)}")
    if dbs:
        db = dbs.pop()
        if not os.path.exists(db):
            raise DuckquashError(f"database file {db!r} does not exist")
    con = duckdb.connect(db, read_only=True) if db else duckdb.connect()
    strip = lambda s: _split_db(s)[1] if _split_db(s) else s  # noqa: E731
    ev = evaluate(con, strip(args.full), {k: strip(v) for k, v in reduced.items()}, args.formula, args.family,
                  plot=args.plot, weight=args.weight)
    print(ev.to_markdown() if args.markdown else str(ev))
def _view_con(view: str, create: bool) -> tuple[duckdb.DuckDBPyConnection, str]:
    """The database of ``db.duckdb:name`` (``create``: it may be a new file) and the view's name."""
    target = _split_db(view)
    if target is None:
        raise DuckquashError(f"a view must be given as db.duckdb:name, got {view!r}")
    if not create and not os.path.exists(target[0]):
        raise DuckquashError(f"database file {target[0]!r} does not exist")
    _check_folder(target[0])
    return duckdb.connect(target[0]), target[1]


def _check_input_file(path: str) -> None:
    """A missing input file (or a glob matching nothing) is named before the output is looked at."""
    if glob.has_magic(path):
        if not glob.glob(path):
            raise DuckquashError(f"no file matches the input pattern {path!r}")
    elif os.path.splitext(path)[1].lower() in (".parquet", ".pq", ".csv", ".tsv", ".gz") and not os.path.exists(path):
        raise DuckquashError(f"input file {path!r} does not exist")


def _check_folder(path: str) -> None:
    """An output's folder must exist (checked before any work, not after the whole run)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DuckquashError(f"the folder of {path!r} does not exist: {folder!r}")


def _is_interrupt(e: BaseException) -> bool:
    """Ctrl-C during a DuckDB query arrives as DuckDB's interrupt error, not KeyboardInterrupt."""
    return isinstance(e, (KeyboardInterrupt, getattr(duckdb, "InterruptException", KeyboardInterrupt))) or (
        isinstance(e, RuntimeError) and "interrupt" in str(e).lower())


def _local_source(con_db: str, arg: str) -> str:
    """``same.duckdb:table`` -> ``table``; other inputs are passed on (files, globs, table names)."""
    src = _split_db(arg)
    if src is None:
        return arg
    if os.path.abspath(src[0]) != os.path.abspath(con_db):
        raise DuckquashError(f"{arg!r} is in another database than the view; export it to Parquet first")
    return src[1]


def _materialize(args: argparse.Namespace) -> None:
    from ..views.build import materialize

    con, name = _view_con(args.view, create=True)
    try:
        res = materialize(con, name, _local_source(_split_db(args.view)[0], args.input),
                          categorical=args.categorical, quantitative=args.quantitative, method=args.method,
                          alpha=args.alpha, bins=args.bins, layers=args.layers, seed=args.seed,
                          weight=args.weight, replace=args.replace, size=args.size)
    finally:
        con.close()
    if not args.quiet:
        print(f"materialised {args.view}: {res.n_rows:,} rows -> {res.n_points:,} points in {res.n_regions:,} "
              "regions", file=sys.stderr)


def _refresh(args: argparse.Namespace) -> None:
    from ..views.refresh import refresh

    con, name = _view_con(args.view, create=False)
    try:
        rep = refresh(con, name, _local_source(_split_db(args.view)[0], args.new_rows),
                      batch_id=args.batch_id, rebin=args.rebin)
    finally:
        con.close()
    if not args.quiet:
        print(rep.summary(), file=sys.stderr)


# Python spellings in shared error messages, as the command line spells them
_CLI_WORDS = (("pass replace=True", "pass --replace"), ("replace=True", "--replace"), ("size=", "--size "),
              ("alpha=", "--alpha "), ("bins=", "--bins "), ("layers=", "--layers "), ("weight=", "--weight "),
              ("batch_id=", "--batch-id "), ("rebin=True", "--rebin"))


def _cli_words(message: str) -> str:
    for py, cli in _CLI_WORDS:
        message = message.replace(py, cli)
    return message


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "squash":
            return _squash(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "materialize":
            _materialize(args)
        elif args.command == "refresh":
            _refresh(args)
        elif args.command == "sample":
            return _sample(args)
        elif args.command == "sql":
            from .shell import run_sql

            return run_sql(args.database, command=args.sql, file=args.file, csv=args.csv, read_only=args.read_only)
        else:
            from .demo import run_demo

            run_demo(args.rows, progress=not args.quiet)
    except BaseException as e:  # noqa: BLE001 - every failure ends with a message and a status, no traceback
        if _is_interrupt(e):
            print("duckquash: interrupted; nothing was written", file=sys.stderr)
            return 130
        if isinstance(e, (DuckquashError, duckdb.Error, OSError)):
            print(f"duckquash: error: {_cli_words(str(e))}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
