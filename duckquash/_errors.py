"""The one errors module: a root class, and subclasses that also inherit the built-in they resemble."""
from __future__ import annotations


class DuckquashError(Exception):
    """Root of every error duckquash raises on purpose."""


class InputError(DuckquashError, ValueError):
    """A bad argument or bad data: unknown column, wrong type, empty source, bad option."""


class SourceNotFoundError(InputError, LookupError):
    """The source table, view or file does not exist."""


class OutputExistsError(InputError, FileExistsError):
    """The output table or file exists and ``replace=False``."""


class DuckquashWarning(UserWarning):
    """Something worth knowing that does not stop the pipeline."""
