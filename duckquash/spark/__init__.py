"""Momentize on Apache Spark, generate here: squash a Spark DataFrame, or refresh a view with Spark rows.

The moment pass is sums, so it runs where the data lives: :func:`squash` fixes the plan from a
sample taken on Spark, runs the moment SQL (``plan.moment_sql(dialect="spark")``) as one Spark
SQL aggregation over the DataFrame, collects only the moment table (one row per region) and
generates the weighted points locally; :func:`refresh` does the same for the new rows of a
materialised view stored in DuckDB. Needs ``pip install "duckquash[spark]"``; the rest of
duckquash never imports pyspark.
"""
from __future__ import annotations

from .api import moments, refresh, squash, squash_plan

__all__ = ["squash", "squash_plan", "moments", "refresh"]
