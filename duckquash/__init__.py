"""duckquash: squash large DuckDB tables into small weighted tables that fit models the same way.

Weights in every output are frequency weights summing to the number of input rows
(statsmodels ``freq_weights``).
"""
from __future__ import annotations

from ._errors import DuckquashError, DuckquashWarning, InputError, OutputExistsError, SourceNotFoundError
from ._evaluate import Evaluation, evaluate
from ._sample import SampleResult, sample
from ._squash import SquashReport, SquashResult, squash
from ._sqlapi import connect, install

__version__ = "0.1.0"

__all__ = [
    "squash", "SquashResult", "SquashReport", "install", "connect",
    "sample", "SampleResult", "evaluate", "Evaluation",
    "DuckquashError", "DuckquashWarning", "InputError", "OutputExistsError", "SourceNotFoundError",
    "__version__",
]
