"""The one quoting helper: hostile names and values survive a round trip through DuckDB."""
import math

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckquash.sql.build import case_bins
from duckquash.sql.quote import ident, literal

names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(names)
def test_identifier_round_trip(name):
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t ({ident(name)} INTEGER)")
    con.execute(f"INSERT INTO t ({ident(name)}) VALUES (7)")
    assert con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 't'").fetchall() == [(name,)]
    assert con.execute(f"SELECT {ident(name)} FROM t").fetchall() == [(7,)]


@settings(max_examples=150, deadline=None)
@given(st.one_of(names, st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**62, 2**62), st.booleans()))
def test_literal_round_trip(value):
    got = duckdb.connect().execute(f"SELECT {literal(value)}").fetchall()[0][0]
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(got)
    else:
        assert got == value and type(got) is type(value)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
                 st.integers(-2**62, 2**62)))
def test_literal_after_minus_is_subtraction(value):
    """'1 -' followed by a negative literal is arithmetic, never the start of a '--' comment."""
    got = duckdb.connect().execute(f"SELECT 1 -{literal(value)}, 7").fetchall()[0]
    assert got[1] == 7 and got[0] == pytest.approx(1 - value, rel=1e-12, abs=1e-12)


def test_injection_is_inert():
    con = duckdb.connect()
    con.execute("CREATE TABLE victim (a INT)")
    evil = "x'); DROP TABLE victim; --"
    assert con.execute(f"SELECT {literal(evil)}").fetchall() == [(evil,)]
    con.execute(f"CREATE TABLE t2 ({ident(evil)} INT)")
    assert con.execute("SELECT count(*) FROM victim").fetchall() == [(0,)]


def test_case_bins_assigns_half_open_bins_and_keeps_null():
    con = duckdb.connect()
    expr = case_bins("v", [1.0, 2.0])
    rows = con.execute(f"SELECT v, {expr} FROM (VALUES (0.5), (1.0), (1.5), (2.0), (9.0), (NULL)) t(v) ORDER BY v NULLS LAST").fetchall()
    assert rows == [(0.5, 0), (1.0, 1), (1.5, 1), (2.0, 2), (9.0, 2), (None, None)]
