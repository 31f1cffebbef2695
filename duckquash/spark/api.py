"""Squash a Spark DataFrame, or fold Spark rows into a materialised view: momentize there, generate here.

Only small tables leave Spark (see :mod:`duckquash.spark.passes`); Generate runs locally through
the one pipeline (:func:`duckquash.squash_from_moments`, :func:`duckquash.views.refresh.refresh_batch`).
"""
from __future__ import annotations

import os
import uuid
from typing import Sequence

import duckdb
import pyarrow as pa

from ..ds.partitions import squash_from_moments
from ..ds.plan import SquashPlan, overflow_columns, plan_from_sample
from ..ds.results import SquashResult
from ..ds.spec import SquashSpec
from ..errors import InputError
from ..io.source import Source
from ..io.write import check_file_target, file_format, write_file
from ..sql.quote import ident
from ..views.refresh import Batch, RefreshReport, refresh_batch
from ..views.storage import ViewNames, read_meta, stored_plan
from . import passes


def _session(df):
    spark = getattr(df, "sparkSession", None)
    if spark is None or not hasattr(df, "createOrReplaceTempView"):
        raise InputError(f"expected a pyspark.sql.DataFrame, got {type(df).__name__}")
    return spark


def squash_plan(spark_df, *, categorical: Sequence[str] | str = (), quantitative: Sequence[str] | str = (),
         method: str | None = None, alpha: float = 1.0, weight: str = "weight", seed: int = 0,
         bins: int | None = None, layers: int | None = None, size: int | None = None,
         con: duckdb.DuckDBPyConnection | None = None, **options) -> tuple[SquashPlan, pa.Table]:
    """Fix a reusable squash plan from ``spark_df``: the extent (one Spark aggregate) and a sample
    (Spark's hash top-k, collected) planned locally with the plan code DuckDB uses. Returns the plan
    and the sample (in DuckDB's sample order; it seeds the solver)."""
    spark = _session(spark_df)
    spec = SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, size=size,
                      **options)
    if spec.method == "datasphere":
        raise InputError("method='datasphere' cannot momentize on Spark (its keys use DuckDB list functions); "
                         "use 'adaptive' or 'hyprect'")
    con = con or duckdb.connect()
    types = passes.column_types(con, spark_df)
    Source("", types, "the Spark DataFrame").check_columns(spec.columns, spec.quantitative)
    with passes.temp_view(spark, spark_df.select(*[spark_df[c] for c in spec.columns])) as view:
        ext = passes.extent(spark, view, spec, types, "the Spark DataFrame")
        rows = passes.sample(con, spark, view, spec, types)
    return plan_from_sample(spec, types, ext, rows, reusable=True), rows


def moments(spark_df, plan: SquashPlan, *, con: duckdb.DuckDBPyConnection | None = None,
            rows: bool = True) -> pa.Table:
    """The integer moment table of ``spark_df`` under ``plan`` (one Spark SQL aggregation, plus a small
    pass for the tiny regions' rows with ``rows``), exactly the table ``plan.moment_sql`` gives in
    DuckDB over the same rows; merge it with :func:`duckquash.squash_from_moments` or
    :func:`duckquash.merge_moments`."""
    spark = _session(spark_df)
    con = con or duckdb.connect()
    with passes.temp_view(spark, spark_df) as view:
        return passes.moments(con, spark, view, plan, rows=rows)


def squash(spark_df, *, categorical: Sequence[str] | str = (), quantitative: Sequence[str] | str = (),
           into: duckdb.DuckDBPyConnection | str | None = None, table: str | Sequence[str] | None = None,
           replace: bool = False, method: str | None = None, alpha: float = 1.0, weight: str = "weight",
           seed: int = 0, bins: int | None = None, layers: int | None = None, size: int | None = None,
           plan: SquashPlan | None = None, **options) -> SquashResult:
    """Squash a Spark DataFrame: plan from a Spark sample, one Spark SQL moment pass, Generate here.

    Parameters
    ----------
    spark_df : pyspark.sql.DataFrame
        Any number of partitions and executors; only small tables are collected.
    categorical, quantitative, method, alpha, weight, seed, bins, layers, size, **options
        As for :func:`duckquash.squash` (``method='datasphere'`` is DuckDB only).
    into : DuckDB connection, database path or Parquet path
        Where the squashed rows go: a connection (table ``table``, default a fresh
        ``squashed_<hex>``), a ``.duckdb``/``.db`` file (opened, table ``table``), or a
        ``.parquet`` file. Default: an in-memory DuckDB connection.
    plan : SquashPlan, optional
        A plan fixed earlier (:func:`squash_plan` here, or :func:`duckquash.squash_plan` on a partition in
        DuckDB); skips the Spark sample (the solver then starts at random).

    The result is what :func:`duckquash.squash_from_moments` gives from the same plan and moment
    table (the same points for the same seed); values outside the plan's range fail loudly.
    """
    spark = _session(spark_df)
    parquet = isinstance(into, (str, os.PathLike)) and file_format(os.fspath(into)) == "PARQUET"
    if isinstance(into, duckdb.DuckDBPyConnection):
        con = into
    elif into is None or parquet:
        con = duckdb.connect()
    elif isinstance(into, (str, os.PathLike)):
        con = duckdb.connect(os.fspath(into))
    else:
        raise InputError(f"into must be a DuckDB connection, a database path or a .parquet path, got {type(into).__name__}")
    if parquet:
        check_file_target(os.fspath(into), replace)  # refused before any pass
        table = f"squashed_{uuid.uuid4().hex[:8]}"
    starts = None
    if plan is None:
        plan, starts = squash_plan(spark_df, categorical=categorical, quantitative=quantitative, method=method,
                                   alpha=alpha, weight=weight, seed=seed, bins=bins, layers=layers, size=size, con=con,
                                   **options)
    plan.install(con)
    with passes.temp_view(spark, spark_df) as view:
        table_m = passes.moments(con, spark, view, plan, rows=True)
    _check_range(plan, table_m)
    sample = con.from_arrow(starts) if starts is not None else None
    res = squash_from_moments(con, plan, [table_m], into=table, replace=replace, sample=sample)
    if parquet:
        try:
            write_file(con, con.sql(f"SELECT * FROM {ident(table)}").to_arrow_table(), os.fspath(into), replace)
        finally:
            con.execute(f"DROP TABLE IF EXISTS {ident(table)}")
    return res


def _check_range(plan: SquashPlan, table: pa.Table) -> None:
    """Refuse values whose fixed-point terms could have overflowed BIGINT (Spark may saturate instead of failing)."""
    q = len(plan.binning.quantitative)
    if not q or not table.num_rows:
        return
    import pyarrow.compute as pc

    lo = [pc.min(table.column(f"__dq_min_{j}")).as_py() for j in range(q)]
    hi = [pc.max(table.column(f"__dq_max_{j}")).as_py() for j in range(q)]
    bad = overflow_columns(plan, lo, hi)
    if bad:
        raise InputError(f"values of {bad} lie so far outside the plan's range that exact sums could overflow; "
                         "fix the plan on data covering every partition's range")


def refresh(con: duckdb.DuckDBPyConnection, view: str | Sequence[str], spark_df, *, batch_id: str | None = None,
            max_update_share: float = 0.1) -> RefreshReport:
    """Fold the rows of ``spark_df`` into the materialised view ``view`` of ``con``: the batch pass and the
    moment pass run on Spark under the view's stored plan; merge, re-solve and write run here, in one
    transaction, exactly as :func:`duckquash.refresh` does with the same rows in DuckDB.

    Batches are recognised again by ``batch_id`` and by content (a Spark hash, so a batch folded in
    from DuckDB is not recognised when it comes again from Spark). ``rebin`` needs the rows here.
    """
    spark = _session(spark_df)
    names = ViewNames.of(view)
    stored, _ = stored_plan(names, read_meta(con, names))
    stored.install(con)
    types = passes.column_types(con, spark_df)
    missing = [c for c in stored.spec.columns if c not in types]
    if missing:
        raise InputError(f"the Spark DataFrame lacks column(s) {missing} of the view; it has {list(types)}")
    cols = spark_df.select(*[spark_df[c] for c in stored.spec.columns])
    with passes.temp_view(spark, cols) as sview:
        stats = passes.batch_stats(spark, sview, stored)

        def sample() -> pa.Table:
            return passes.sample(con, spark, sview, stored.spec, types)

        batch = Batch("the Spark DataFrame", {c: types[c] for c in stored.spec.columns}, stats,
                      lambda: passes.moments(con, spark, sview, stored, rows=True), sample)
        return refresh_batch(con, names.parts, batch, batch_id=batch_id, max_update_share=max_update_share)
