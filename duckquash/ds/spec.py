"""The squash specification: built and checked once at the API boundary, then trusted by every stage."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ..errors import InputError
from ..sql.names import PREFIX

METHODS = ("adaptive", "hyprect", "datasphere")


def _names(value: Iterable[str] | str | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]  # "a,b" shorthand; pass a list for odd names
    out = tuple(value)
    for v in out:
        if not isinstance(v, str) or not v:
            raise InputError(f"{what} column names must be non-empty strings, got {v!r}")
        if v.startswith(PREFIX):
            raise InputError(f"column name {v!r} uses the prefix {PREFIX!r}, reserved for duckquash")
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise InputError(f"{what} columns listed more than once: {dup}")
    return out


@dataclass(frozen=True)
class SquashSpec:
    """What to squash and how. See :func:`duckquash.squash` for the meaning of each field."""

    categorical: tuple[str, ...] = ()
    quantitative: tuple[str, ...] = ()
    method: str | None = None  # None: "hyprect" if bins is given, "datasphere" if layers is, else "adaptive"
    alpha: float = 1.0
    bins: int | None = None  # None: 3
    layers: int | None = None  # None: 3
    degree: int = 4
    weight: str = "weight"
    seed: int = 0
    exact_covariance: bool = True
    sample_size: int = 100_000
    max_iter: int = 20
    size: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        set_("categorical", _names(self.categorical, "categorical"))
        set_("quantitative", _names(self.quantitative, "quantitative"))
        both = sorted(set(self.categorical) & set(self.quantitative))
        if both:
            raise InputError(f"columns listed as both categorical and quantitative: {both}")
        if not self.categorical and not self.quantitative:
            raise InputError("nothing to squash: give at least one categorical or quantitative column")
        method = self.method
        if method is None:
            method = "hyprect" if self.bins is not None else "datasphere" if self.layers is not None else "adaptive"
        set_("bins", 3 if self.bins is None else self.bins)
        set_("layers", 3 if self.layers is None else self.layers)
        method = str(method).lower().replace("_", "").replace("-", "")
        if method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        set_("method", method)
        try:
            alpha = float(self.alpha)
        except (TypeError, ValueError):
            raise InputError(f"alpha must be a number, got {self.alpha!r}") from None
        if not math.isfinite(alpha) or alpha < 0:
            raise InputError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        set_("alpha", alpha)
        for name, lo, hi in (("bins", 1, 1000), ("layers", 1, 100), ("degree", 2, 4),
                             ("sample_size", 100, 50_000_000), ("max_iter", 1, 10_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise InputError(f"size must be a positive integer (the number of pseudo-points wanted), got {self.size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.weight, str) or not self.weight:
            raise InputError(f"weight must be a non-empty column name, got {self.weight!r}")
        if self.weight.startswith(PREFIX):
            raise InputError(f"the weight column name {self.weight!r} uses the prefix {PREFIX!r}, reserved for duckquash")
        if self.weight in self.categorical or self.weight in self.quantitative:
            raise InputError(f"the weight column name {self.weight!r} is also an input column; pick another")

    @property
    def columns(self) -> tuple[str, ...]:
        return self.categorical + self.quantitative

    def as_dict(self) -> dict:
        """Parameters as plain values, for reports and stored metadata."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
