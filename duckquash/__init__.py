"""duckquash: squash large DuckDB tables into small weighted tables that fit models the same way.

Weights in every output are frequency weights summing to the number of input rows
(statsmodels ``freq_weights``). This module is the public API; the layers below it are

    sql        quoting, internal names, shared SQL builders, dialect rendering
    io         sources, atomic writes, transactions, progress
    ds, model  data squashing (Group -> Momentize -> Generate) | GLMs fitted in SQL
    lds, views likelihood-based squashing | materialised squashed views
    api        squash() and glm(), which choose between the layers above
    spark      the moment pass on Apache Spark, Generate here (``duckquash.spark``; optional
               extra, imported only when used: the core never imports pyspark)
    baselines  uniform/OSMAC samples and the evaluation protocol
    frontends  command line, SQL entry point, demo

and each imports only from layers listed before it (``tests/test_layout.py`` checks).
"""
from __future__ import annotations

from .api import glm, squash
from .baselines.evaluate import Evaluation, evaluate
from .baselines.sample import SampleResult, sample
from .ds.partitions import merge_moments, squash_from_moments, squash_plan
from .ds.plan import SquashPlan
from .ds.results import SquashReport, SquashResult
from .errors import (ConvergenceWarning, DuckquashError, DuckquashWarning, InputError, InternalError, NotFromMoments,
                     OutputExistsError, PerfectSeparationWarning, SourceNotFoundError)
from .frontends.sqlapi import connect, install
from .model.crossprod import CrossProduct, crossprod
from .model.formula import Design, build_design
from .model.irls import fit_design
from .model.results import GLMResults
from .version import __version__
from .views.build import ViewResult, materialize
from .views.from_moments import glm_from_moments
from .views.refresh import RefreshReport, refresh
from .views.storage import is_view, view_plan

__all__ = [
    "squash", "SquashResult", "SquashReport", "install", "connect",
    "sample", "SampleResult", "evaluate", "Evaluation",
    "materialize", "refresh", "view_plan", "is_view", "glm_from_moments", "NotFromMoments", "ViewResult", "RefreshReport",
    "squash_plan", "SquashPlan", "merge_moments", "squash_from_moments",
    "glm", "GLMResults", "crossprod", "CrossProduct", "fit_design", "build_design", "Design", "ConvergenceWarning", "PerfectSeparationWarning",
    "DuckquashError", "DuckquashWarning", "InputError", "InternalError", "OutputExistsError", "SourceNotFoundError",
    "__version__",
]
