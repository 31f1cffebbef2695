"""Every error and warning duckquash raises on purpose, in one place.

Errors about the caller's input inherit both :class:`DuckquashError` and the built-in they
resemble (``ValueError``, ``LookupError``, ``FileExistsError``), so ``except ValueError`` keeps
working. :class:`InternalError` is a bug in duckquash, never the caller's fault.
"""
from __future__ import annotations


class DuckquashError(Exception):
    """Root of every error duckquash raises on purpose."""


class InputError(DuckquashError, ValueError):
    """A bad argument or bad data: unknown column, wrong type, empty source, bad option."""


class SourceNotFoundError(InputError, LookupError):
    """The source table, view or file does not exist."""


class OutputExistsError(InputError, FileExistsError):
    """The output table or file exists and ``replace=False``."""


class NotFromMoments(InputError):
    """The model needs more than a view's stored moments hold (fit the squashed rows instead)."""


class InternalError(DuckquashError, RuntimeError):
    """A check inside duckquash failed: a bug to report, not a problem with the input."""


class DuckquashWarning(UserWarning):
    """Something worth knowing that does not stop the pipeline."""


class ConvergenceWarning(DuckquashWarning):
    """IRLS stopped at ``max_iter`` before the coefficients settled."""


class PerfectSeparationWarning(DuckquashWarning):
    """Binomial fitted probabilities reach 0 or 1: (quasi-)separation, some coefficients are infinite."""
