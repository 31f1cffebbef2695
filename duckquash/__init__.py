"""duckquash: squash large DuckDB tables into small weighted tables that fit models the same way.

Weights in every output are frequency weights summing to the number of input rows
(statsmodels ``freq_weights``).
"""
from __future__ import annotations

from ._errors import DuckquashError, DuckquashWarning, InputError, OutputExistsError, SourceNotFoundError
from ._evaluate import Evaluation, evaluate
from ._sample import SampleResult, sample
from ._formula import Design, build_design
from ._glm import ConvergenceWarning, GLMResults, PerfectSeparationWarning, fit_design, glm
from ._squash import SquashReport, SquashResult, squash
from ._sqlapi import connect, install
from ._merge import SquashPlan, merge_moments, squash_from_moments, squash_plan
from ._views import NotFromMoments, RefreshReport, ViewResult, glm_from_moments, is_view, materialize, refresh, view_plan

__version__ = "0.1.0"

__all__ = [
    "squash", "SquashResult", "SquashReport", "install", "connect",
    "sample", "SampleResult", "evaluate", "Evaluation",
    "materialize", "refresh", "view_plan", "is_view", "glm_from_moments", "NotFromMoments", "ViewResult", "RefreshReport",
    "squash_plan", "SquashPlan", "merge_moments", "squash_from_moments",
    "glm", "GLMResults", "fit_design", "build_design", "Design", "ConvergenceWarning", "PerfectSeparationWarning",
    "DuckquashError", "DuckquashWarning", "InputError", "OutputExistsError", "SourceNotFoundError",
    "__version__",
]
