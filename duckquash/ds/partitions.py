"""Partitions: fix a plan once, momentize partitions anywhere, merge the partial tables exactly, squash.

The moment SQL a plan emits (:meth:`SquashPlan.moment_sql`) is one plain ``GROUP BY`` per
partition, file, machine or appended batch; :func:`merge_moments` adds the partial integer
tables exactly and :func:`squash_from_moments` runs Generate on the sum through the one
pipeline (:func:`duckquash.ds.pipeline.run`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import duckdb
import pyarrow as pa

from ..errors import InputError
from ..io.source import resolve
from ..io.transaction import drop_temp, registered
from ..sql.names import temp_name
from ..sql.quote import ident
from . import pipeline
from .binning import sample_sql
from .plan import SquashPlan, check_moment_columns, plan_from_source
from .results import SquashResult, output_parts, write_result
from .spec import SquashSpec


def squash_plan(con: duckdb.DuckDBPyConnection, source: object, *, categorical: Sequence[str] | str = (),
                quantitative: Sequence[str] | str = (), method: str | None = None, alpha: float = 1.0,
                weight: str = "weight", seed: int = 0, bins: int | None = None, layers: int | None = None, size: int | None = None,
                **options) -> SquashPlan:
    """Fix a squash's binning from ``source`` (all data, a sample, or one representative partition).

    The returned plan emits the moment SQL for each partition (:meth:`SquashPlan.moment_sql`);
    :func:`squash_from_moments` merges the partial tables and generates the squashed table.
    Values outside the plan's fixed-point range make a partition's query fail loudly (BIGINT
    overflow) rather than give wrong sums; build the plan on data covering every partition's range.
    """
    spec = SquashSpec(categorical, quantitative, method, alpha, bins, layers, weight=weight, seed=seed, size=size,
                      **options)
    src = resolve(con, source)
    try:
        plan, _ = plan_from_source(con, src, spec)
    finally:
        src.close()
    return plan.install(con)


@contextlib.contextmanager
def _from_items(con: duckdb.DuckDBPyConnection, tables: Sequence[object]) -> Iterator[list[str]]:
    """Table names, SQL FROM items, Arrow tables or relations as FROM items for the body's duration."""
    items: list[str] = []
    with contextlib.ExitStack() as stack:
        for t in tables:
            if isinstance(t, pa.Table):
                items.append(ident(stack.enter_context(registered(con, t, "part"))))
            elif isinstance(t, duckdb.DuckDBPyRelation):
                view = temp_name("part")
                t.create_view(view, replace=False)
                stack.callback(lambda v=view: con.execute(f"DROP VIEW IF EXISTS {ident(v)}"))
                items.append(ident(view))
            elif isinstance(t, str):
                src = resolve(con, t)
                stack.callback(src.close)
                items.append(src.sql)
            else:
                raise InputError(f"a moment table must be a table name, query, Arrow table or relation, "
                                 f"got {type(t).__name__}")
        yield items


def _merged(con: duckdb.DuckDBPyConnection, plan: SquashPlan, tables: Sequence[object]) -> str:
    """The checked, exact sum of partial moment tables as a TEMP table (the caller drops it)."""
    if not tables:
        raise InputError("merge_moments needs at least one moment table")
    with _from_items(con, tables) as items:
        rows = all([check_moment_columns(con, plan, f, f"moment table #{i + 1}") for i, f in enumerate(items)])
        return pipeline.merge(con, plan, items, rows=rows)


def merge_moments(con: duckdb.DuckDBPyConnection, plan: SquashPlan, tables: Sequence[object]) -> pa.Table:
    """Add partial integer moment tables (names, queries, Arrow tables or relations) into one Arrow table.

    The result is exactly the moment table of the union of the partitions (see ``plan.py``).
    """
    merged = _merged(con, plan, tables)
    try:
        return con.sql(f"SELECT * FROM temp.{ident(merged)}").to_arrow_table()
    finally:
        drop_temp(con, [merged])


def squash_from_moments(con: duckdb.DuckDBPyConnection, plan: SquashPlan, tables: Sequence[object], *,
                        into: str | Sequence[str] | None = None, replace: bool = False,
                        sample: object = None) -> SquashResult:
    """Merge partial moment tables and generate the squashed table ``into``.

    Parameters
    ----------
    plan : SquashPlan
        The plan every partial table was computed with (:func:`squash_plan` or :func:`view_plan`).
    tables : list
        Partial integer moment tables: table names, queries, Arrow tables or relations.
    into, replace
        Output table, as for :func:`duckquash.squash`.
    sample : source, optional
        Rows to seed the solver with (e.g. one partition); default: random starts. The same
        moments, plan and sample always give the same output.
    """
    parts = output_parts(con, into, replace)
    merged = _merged(con, plan, tables)
    try:
        smp = None
        if sample is not None:
            src = resolve(con, sample)
            try:
                smp = con.sql(sample_sql(src, plan.spec)).to_arrow_table()
            finally:
                src.close()
        out, _ = pipeline.run(con, plan, moments=f"temp.{ident(merged)}", sample=smp)
    finally:
        drop_temp(con, [merged])
    return write_result(con, out.points, out.report(), parts, replace)
