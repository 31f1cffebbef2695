"""Formulas to SQL: same column names and values as formulaic's in-memory design; errors name the term."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from formulaic import model_matrix

import duckquash
from duckquash import InputError, build_design


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    df = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    df["x"] = np.exp(rng.normal(size=n))
    df["cat1"] = rng.integers(0, 5, n)
    df["s"] = rng.choice(["lo", "mid", "hi"], n)
    df["flag"] = rng.random(n) < 0.4
    df["y"] = df.a + df.b * df.c + rng.normal(size=n)
    df["my col"] = rng.normal(size=n)
    df["it's"] = rng.normal(size=n)
    return df


@pytest.fixture
def fcon(frame):
    c = duckdb.connect()
    c.register("f_view", frame)
    c.execute("CREATE TABLE f AS SELECT * FROM f_view")
    c.unregister("f_view")
    yield c
    c.close()


def sql_matrix(con, design):
    rows = con.execute(f"SELECT {', '.join(design.exprs)} FROM f WHERE {design.where}").fetchall()
    return np.array(rows, dtype=float)


FORMULAS = [
    "y ~ a + b",
    "y ~ 0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment, levels=lnames)",
    "y ~ (a + b + c)**2 + C(cat1)",
    "y ~ I(a**2) + np.log(x) + log(x) + np.exp(b) + np.sqrt(x) + I(a * b - 1) + np.square(c)",
    "y ~ a - 1",
    "y ~ C(cat1, Treatment(reference=2)) + C(s, Sum) + s:a",
    "y ~ s * flag + C(cat1):b",
    "np.log(x) ~ Q('my col') + `it's` + C(s, Treatment('mid'))",
    "y ~ C(cat1, Sum):C(s) + a",
    "y ~ I(a > 0) + a",
]


@pytest.mark.parametrize("formula", FORMULAS)
def test_design_matches_formulaic(fcon, frame, formula):
    env = {"lnames": np.arange(5)}
    design = build_design(fcon, "f", formula, levels=env)
    ctx = {"lnames": np.arange(5), "log": np.log}
    # formulaic's own Treatment is a function: bare ``C(x, Treatment)`` (patsy style) needs a rewrite there
    mm = model_matrix(formula.replace("C(cat1, Treatment, levels=lnames)", "C(cat1, levels=lnames)"),
                      frame, context=ctx)
    want_names = [n.replace("C(cat1, levels=lnames)", "C(cat1, Treatment, levels=lnames)") for n in mm.rhs.columns]
    assert list(design.names) == want_names
    got = sql_matrix(fcon, design)
    np.testing.assert_allclose(got, mm.rhs.to_numpy(dtype=float), rtol=1e-12, atol=1e-12)
    y = np.array(fcon.execute(f"SELECT {design.response} FROM f WHERE {design.where}").fetchall(), dtype=float)
    np.testing.assert_allclose(y[:, 0], mm.lhs.to_numpy(dtype=float)[:, 0], rtol=1e-12)
    assert design.response_name == mm.lhs.columns[0]


def test_seed_formula_names(fcon):
    d = build_design(fcon, "f", "y ~ 0 + a + b + c + d + d:c + a:b + a:c + C(cat1, Treatment, levels=lnames)",
                     levels={"lnames": np.arange(5)})
    assert d.names == ("a", "b", "c", "d") + tuple(f"C(cat1, Treatment, levels=lnames)[{i}]" for i in range(5)) \
        + ("d:c", "a:b", "a:c")
    assert set(d.variables) == {"y", "a", "b", "c", "d", "cat1"}


def test_no_lhs(fcon):
    d = build_design(fcon, "f", "a + s")
    assert d.response is None and d.names == ("Intercept", "a", "s[T.lo]", "s[T.mid]")


def test_levels_in_one_pass(fcon, monkeypatch):
    """All categorical variables' levels come from ONE query over the source."""
    calls = []
    real = duckdb.DuckDBPyConnection.execute

    class Spy:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *a):
            calls.append(sql)
            return real(self.con, sql, *a)

    build_design(Spy(fcon), "f", "y ~ C(cat1) + s + C(s, Sum):C(cat1)", columns=dict(
        fcon.execute("SELECT column_name, column_type FROM (DESCRIBE f)").fetchall()))
    assert len(calls) == 1 and "DISTINCT" in calls[0]


def test_hostile_column_names(con):
    con.execute("""CREATE TABLE "we""ird" AS SELECT i::DOUBLE AS "x; DROP TABLE t --", (i % 3)::VARCHAR AS "a""b",
                   2.0 * i + (i % 7) AS "y y" FROM range(50) r(i)""")
    # formulaic cannot evaluate a quote inside Q('...') within C(); backquotes work
    d = build_design(con, '"we""ird"', """Q('y y') ~ Q('x; DROP TABLE t --') + C(`a"b`)""")
    assert d.names == ("Intercept", "Q('x; DROP TABLE t --')", """C(`a"b`)[T.1]""", """C(`a"b`)[T.2]""")
    res = duckquash.glm(con, 'we"ird', """Q('y y') ~ Q('x; DROP TABLE t --') + `a"b`""")
    assert res.exog_names[2:] == ['a"b[T.1]', 'a"b[T.2]']
    assert res.converged and len(res.params) == 4


BAD = [
    ("y ~ zz + a", "unknown variable 'zz'"),
    ("y ~ a + poly(b, 2)", "poly\\(b, 2\\)"),
    ("y ~ a + C(cat1, levels=[0, 1, 2, 3, 4, 9])", "never occur"),
    ("y ~ a + C(cat1, levels=[0, 1, 2])", "not among the levels"),
    ("y ~ a | b", "multi-part"),
    ("y ~ a + b % 2", "cannot parse"),
    ("y ~ C(a + b)", "C\\(\\) needs a column"),
    ("y ~ C(s, Poly(3), foo=1)", "foo="),
    ("y ~ a + C(s, levels=missing_name)", "missing_name"),
    ("s ~ a", "response 's' must be numeric"),
    ("y ~ s + np.log(s)", "used as a number"),
    ("", "non-empty"),
]


@pytest.mark.parametrize("formula,message", BAD, ids=[b[1] for b in BAD])
def test_bad_formulas(fcon, formula, message):
    with pytest.raises(InputError, match=message):
        build_design(fcon, "f", formula)


def test_enum_and_boolean_categoricals(con):
    con.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    con.execute("""CREATE TABLE t AS SELECT (i % 5)::DOUBLE AS y, (['sad', 'ok', 'happy'])[i % 3 + 1]::mood AS m,
                   i % 2 = 0 AS fl FROM range(60) r(i)""")
    d = build_design(con, "t", "y ~ m + C(fl) + fl")
    want = model_matrix("y ~ m + C(fl) + fl", con.table("t").df())
    assert list(d.names) == list(want.rhs.columns)  # ENUM levels in enum order, as pandas reads them
    got = np.array(con.execute(f"SELECT {', '.join(d.exprs)} FROM t").fetchall(), dtype=float)
    np.testing.assert_allclose(got, want.rhs.to_numpy(dtype=float))
