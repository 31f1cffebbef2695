"""The passes over a Spark DataFrame: each one Spark SQL query, each returning a small Arrow table.

Nothing here imports pyspark at module level: the functions take the DataFrame (and its
``sparkSession``) they are given. Every query but the sample is DuckDB SQL rendered for Spark by
:func:`duckquash.sql.dialect.render` (the moment SQL through :meth:`SquashPlan.moment_sql`); the
sample is Spark's own ``xxhash64`` top-k, the one engine-specific piece.

What travels: to Spark, the plan's SQL text and (adaptive plans) its two auxiliary tables (one row
per categorical cell, one row of node lists); back, the extent row, the sample (at most
``sample_size`` rows), the moment table (one row per region) and the rows of the tiny regions
(at most ``fetch_rows`` per region, only for regions that small).
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..ds.binning import Extent, sample_sql
from ..ds.plan import SquashPlan, row_lists_sql
from ..ds.spec import SquashSpec
from ..errors import InputError
from ..io.source import Source
from ..io.transaction import registered
from ..sql.build import key_match
from ..sql.dialect import FROM_PLACEHOLDER, render
from ..sql.names import N_COL, ROWS_COL, max_col, min_col, moment_col
from ..sql.quote import comma, ident
from ..views.storage import BatchStats, batch_stats_sql, stats_from_row


def spark_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def to_arrow(df) -> pa.Table:
    """A (small) Spark DataFrame collected as an Arrow table, its types kept."""
    if hasattr(df, "toArrow"):  # pyspark >= 4.0
        return df.toArrow()
    from pyspark.sql.pandas.types import to_arrow_schema  # pyspark 3.5

    batches = df._collect_as_arrow()  # noqa: SLF001 - pyspark 3.5's Arrow collect
    schema = to_arrow_schema(df.schema)
    return pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()


def from_arrow(spark, table: pa.Table):
    """An Arrow table as a Spark DataFrame."""
    try:
        return spark.createDataFrame(table)  # pyspark >= 4.0 takes Arrow tables
    except (TypeError, ValueError):
        return spark.createDataFrame(table.to_pandas())


@contextlib.contextmanager
def temp_view(spark, df, name: str | None = None) -> Iterator[str]:
    """``df`` as a Spark temp view for the body; yields the quoted name."""
    name = name or f"__dq_spark_{uuid.uuid4().hex[:12]}"
    df.createOrReplaceTempView(name)
    try:
        yield spark_ident(name)
    finally:
        spark.catalog.dropTempView(name)


@contextlib.contextmanager
def aux_views(spark, plan: SquashPlan) -> Iterator[None]:
    """The plan's auxiliary tables (adaptive: cells and node lists) as Spark temp views under their names."""
    with contextlib.ExitStack() as stack:
        for name, table in plan.binning.aux_tables().items():
            stack.enter_context(temp_view(spark, from_arrow(spark, table), name))
        yield


def column_types(con: duckdb.DuckDBPyConnection, df) -> dict[str, str]:
    """Each column's DuckDB type as DuckDB sees the DataFrame's rows collected to Arrow."""
    empty = to_arrow(df.limit(0))
    with registered(con, empty, "schema") as view:
        return {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {ident(view)}").fetchall()}


def extent(spark, view: str, spec: SquashSpec, types: dict[str, str], label: str) -> Extent:
    """Row count, and min and max of each quantitative column ignoring NULL and NaN (DuckDB's first pass)."""
    aggs = ["count(*)"]
    for c in spec.quantitative:
        v = f"{ident(c)}::DOUBLE"
        if types[c].upper().split("(")[0] in ("FLOAT", "DOUBLE", "REAL"):
            v = f"nullif({v}, 'NaN'::DOUBLE)"
        aggs += [f"min({v})", f"max({v})"]
    row = spark.sql(render(f"SELECT {comma(aggs)} FROM {FROM_PLACEHOLDER}", "spark", view)).collect()[0]
    mins = tuple(None if v is None else float(v) for v in row[1::2])
    maxs = tuple(None if v is None else float(v) for v in row[2::2])
    for c, lo, hi in zip(spec.quantitative, mins, maxs):
        for v in (lo, hi):
            if v is not None and v in (float("inf"), float("-inf")):
                raise InputError(f"quantitative column {c!r} holds infinite values; remove or recode them first")
    if int(row[0]) == 0:
        raise InputError(f"{label} is empty: there is nothing to squash")
    return Extent(int(row[0]), mins, maxs)


def sample(con: duckdb.DuckDBPyConnection, spark, view: str, spec: SquashSpec,
           types: dict[str, str]) -> pa.Table:
    """The Group stage's sample: the ``sample_size`` rows with the smallest ``xxhash64(seed, row)`` on
    Spark (deterministic, any partitioning), then put in DuckDB's sample order locally. When the
    DataFrame has at most ``sample_size`` rows this is exactly the sample DuckDB draws from the same rows."""
    cols = [spark_ident(c) for c in spec.columns]
    order = comma([f"xxhash64({int(spec.seed)}, {comma(cols)})"] + [f"{c} ASC NULLS FIRST" for c in cols])
    rows = to_arrow(spark.sql(f"SELECT {comma(cols)} FROM {view} ORDER BY {order} LIMIT {int(spec.sample_size)}"))
    return duckdb_order(con, rows, spec, types)


def duckdb_order(con: duckdb.DuckDBPyConnection, rows: pa.Table, spec: SquashSpec, types: dict[str, str]) -> pa.Table:
    """Rows in the order (and subset) of DuckDB's deterministic sample of them."""
    with registered(con, rows, "sample") as view:
        return con.sql(sample_sql(Source(ident(view), types, "the sample"), spec)).to_arrow_table()


def moments(con: duckdb.DuckDBPyConnection, spark, view: str, plan: SquashPlan, *, rows: bool = True) -> pa.Table:
    """The integer moment table of the DataFrame behind ``view`` under ``plan``: one Spark SQL aggregation,
    plus (``rows`` and a plan that keeps them) a second, filtered pass for the rows of regions with at
    most ``plan.fetch_rows`` rows. Returned with the column types DuckDB's moment table has (sums as
    DECIMAL(38,0) in Arrow, i.e. DuckDB's HUGEINT), the row lists built as DuckDB's ``min(list, k)``."""
    with aux_views(spark, plan):
        table = to_arrow(spark.sql(plan.moment_sql(view, dialect="spark")))
        lists = None
        if rows and plan.keeps_rows:
            keys = list(plan.key_columns)
            small = table.filter(pc.less_equal(table.column(N_COL), plan.fetch_rows)).select(keys)
            if small.num_rows:
                with temp_view(spark, from_arrow(spark, small)) as small_view:
                    lists = to_arrow(spark.sql(plan.region_rows_sql(view, small_view.strip("`"), dialect="spark")))
    return canonical(con, plan, table, lists, rows and plan.keeps_rows)


def canonical(con: duckdb.DuckDBPyConnection, plan: SquashPlan, table: pa.Table, rows: pa.Table | None,
              with_rows: bool) -> pa.Table:
    """A moment table from another engine with DuckDB's column types; ``rows``: tiny regions' rows."""
    types = dict(plan.column_types)
    q = len(plan.binning.quantitative)
    bits = plan.bits()
    sel = [f"CAST(m.{ident(c)} AS {types[c]}) AS {ident(c)}" for c in plan.spec.categorical]
    sel += [f"m.{ident(c)}" for c in plan.binning.key_columns()]
    sel.append(f"m.{ident(N_COL)}::BIGINT AS {ident(N_COL)}")
    sel += [f"m.{ident(c)}::DOUBLE AS {ident(c)}" for j in range(q) for c in (min_col(j), max_col(j))]
    for e in plan.exps:
        c = ident(moment_col(e))
        sel.append(f"m.{c}::{'HUGEINT' if bits[e] is not None else 'DOUBLE'} AS {c}")
    with contextlib.ExitStack() as stack:
        m = stack.enter_context(registered(con, table, "moments"))
        sql = f"SELECT {comma(sel)} FROM {ident(m)} AS m"
        if with_rows:
            if rows is not None and rows.num_rows:
                r = stack.enter_context(registered(con, rows, "rows"))
                sql = (f"SELECT m.*, l.{ident(ROWS_COL)} FROM ({sql}) AS m LEFT JOIN ({row_lists_sql(plan, ident(r))}) "
                       f"AS l ON {key_match('m', 'l', plan.key_columns)}")
            else:
                sql = f"SELECT *, NULL::DOUBLE[][] AS {ident(ROWS_COL)} FROM ({sql})"
        return con.sql(sql).to_arrow_table()


def batch_stats(spark, view: str, plan: SquashPlan) -> BatchStats:
    """The refresh's batch pass (count, fingerprint, range, rows beyond the binned range) on Spark.

    The fingerprint is Spark's ``hash`` summed over rows: order-free like DuckDB's but a different
    hash, so it is marked ``spark:`` (a batch folded in from Spark is recognised again from Spark)."""
    row = spark.sql(render(batch_stats_sql(plan, FROM_PLACEHOLDER), "spark", view)).collect()[0]
    return stats_from_row(plan, tuple(row), engine="spark")


