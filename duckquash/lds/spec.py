"""LDS parameters: the validated :class:`LdsSpec` and the measured defaults it records."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..sql.names import PREFIX as _P

INITS = ("sample", "step", "mle")
FAMILIES = ("binomial", "poisson", "gaussian")
CENTRE_ROWS = True  # poisson/gaussian: cluster on row-centred profiles (40k rows, M = 200: poisson MSE 121 -> 4.6)
WHITEN = 1.0  # profile coordinates scaled by sd**(1 - WHITEN) relative to the first: see profiles.basis (0.7 until the pairs)
# Second-order profiles when, on the sample's rows (<= 50k), they are within this fraction of every
# coordinate's within-cell spread of the exact ones: a row can then only change leaf when it lies within
# ~1% of a split, whose threshold is itself a quantile of ~20 sample rows per leaf (its standard error
# is 10-20% of the node's spread).
TAYLOR_TOL = 1e-2
PROFILES = ("auto", "exact")
POINTS = (1, 2)


@dataclass(frozen=True)
class LdsSpec:
    """What LDS squashes and how; validated once here (see :func:`duckquash.squash`, ``method="lds"``).

    ``size`` is the wanted number of pseudo-points M (the output has at most M rows, usually a few
    fewer when tiny cells or tied profiles leave leaves empty). ``ds``/``df`` are the star and
    factorial distances in standard-error units; ``cooling`` multiplies both at each ILDS iteration.
    ``sample_size`` (for theta_0) defaults to ``max(20000, 20 * size, 10 * p, N / 10)`` rows
    (capped at N); the profile tree is fitted to a sub-sample of ``max(20000, 20 * size)`` of them.
    ``branching`` is the k-d tree's fan-out per level (fewer levels, more comparisons per level).
    ``refine``: move each pseudo-point (its quantitative variables, within the cluster's range) so
    that weight x its profile matches the cluster's summed profile (the paper's optional step).
    ``points``: pseudo-points per cluster: 2 (the default; M / 2 clusters, each the mean +- its
    spread along the direction adding the most information) or 1 (the cluster mean).
    ``calibrate``: adjust the points (weights, and positions within their cluster's range; cell
    totals kept) so that the squashed table's MLE is theta_0 + Sigma_0 S(theta_0), the Newton step
    with the full data's score summed in the squash pass (see :mod:`duckquash.lds.points`).
    ``profiles``: ``"auto"`` computes the rows' profiles from their second-order expansion around
    eta_0 (binomial, gaussian) when, on up to 50k sample rows, it is within 1% of every coordinate's
    within-cell spread of the exact profile, else exactly; ``"exact"`` always evaluates the log-likelihood at every
    design point.

    Defaults: geometric mean of the main-effects MSE (vs the full fit) over 12 paper-structure data
    sets of 40k rows at M = 200 (a uniform sample: ~250), LDS / ILDS(3): ds = df = 2: 49 / 0.90;
    3: 40 / 0.84; 4: 27 / 0.87; 6: 17 / 0.86; 8: 15 / 0.91 (corners +-2 on each axis, i.e. at
    distance 6.3 for p = 10: 21 / 0.83). Larger designs help one-pass LDS a little but make the
    second-order profiles less accurate; 4 keeps them within 1% on 10M rows. Cooling 0.5: ILDS(3)
    0.87 on the same 12 data sets (0.35: 0.98; 0.7: 0.89). Branching 4 (LDS 7.3 vs 11.8 for binary
    splits, ILDS(3) 0.20 vs 0.24) was measured on 100k rows at M = 500 with the earlier scaling.
    (All of these with one mean point per cluster, no calibration and WHITEN = 0.7.)

    ``points`` / ``calibrate`` / WHITEN (2026-12): 12 paper_like data sets (seeds 11, 0, 2 at
    N = 40k with M = 200 and 40; seeds 11, 3, 5 at N = 200k with M = 1000 and 200) x squash seeds
    0, 1, 2 (36 runs); main-effects MSE, geometric mean / worst, runs where LDS MSE x 2 > a uniform
    sample's (gm 1044), squashed SEs / full SEs, and a sub-model (C(a1) + x1 + x3) fitted on the
    table (a uniform sample: 658):

    ==========================  =============  ============  ===========  ========  ======
    variant                     LDS            ILDS(3)       LDS*2 > srs  SE ratio  sub
    ==========================  =============  ============  ===========  ========  ======
    before (1 point, no cal.)   1510 / 6.8e6   19 / 1.8e5    19 of 36     2.48      3210
    points=2, calibrate (now)   0.0017 / 0.016 6e-9 / 2e-7   0            1.24      20
    points=2, calibrate=False   76 / 5800      78 / 5700     3            1.29      243
    points=1, calibrate         0.062 / 2.4e6  8e-6 / 3.7e6  5 (M = 40)   2.04      534
    now with WHITEN = 0.7       0.0017 / 0.016 6e-9 / 2e-7   0            1.26      30
    ==========================  =============  ============  ===========  ========  ======

    The worst LDS runs are the 200k-row ones (theta_0 from a 20k-row sample, 8 SE off; the
    calibrated Newton step leaves (1 - Sigma_0 I) of that). The second-order model (squares and
    interactions) stays badly fitted on an LDS table (gm 7.9e4 against 2.0e4 for a uniform
    sample; 1.4e7 before). Without calibration the pairs keep a Jensen bias off eta_0, so
    ``calibrate=False`` is worse than before for ILDS at M = N/200 (11 against 0.85 on 40k rows).
    """

    formula: str
    size: int
    family: str = "binomial"
    iterations: int = 1
    init: str = "sample"
    ds: float = 4.0
    df: float = 4.0
    cooling: float = 0.5
    seed: int = 0
    weight: str = "weight"
    sample_size: int | None = None
    branching: int = 4
    profiles: str = "auto"
    refine: bool = False
    points: int = 2
    calibrate: bool = True
    levels: dict | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        if not isinstance(self.formula, str) or "~" not in self.formula:
            raise InputError(f"method='lds' needs formula='y ~ x1 + ...' naming the model, got {self.formula!r}")
        fam = str(self.family).lower()
        if fam not in FAMILIES:
            raise InputError(f"family must be one of {list(FAMILIES)}, got {self.family!r}")
        set_("family", fam)
        init = str(self.init).lower()
        if init not in INITS:
            raise InputError(f"init must be one of {list(INITS)}, got {self.init!r}")
        set_("init", init)
        prof = str(self.profiles).lower()
        if prof not in PROFILES:
            raise InputError(f"profiles must be one of {list(PROFILES)}, got {self.profiles!r}")
        set_("profiles", prof)
        for name, lo in (("size", 1), ("iterations", 1), ("branching", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
            set_(name, int(v))
        if self.sample_size is not None and (isinstance(self.sample_size, bool) or
                                             not isinstance(self.sample_size, (int, np.integer))
                                             or self.sample_size < 10):
            raise InputError(f"sample_size must be an integer >= 10, got {self.sample_size!r}")
        for name in ("ds", "df", "cooling"):
            try:
                v = float(getattr(self, name))
            except (TypeError, ValueError):
                raise InputError(f"{name} must be a number, got {getattr(self, name)!r}") from None
            if not math.isfinite(v) or v <= 0 or (name == "cooling" and v > 1):
                raise InputError(f"{name} must be a finite number > 0{' and <= 1' if name == 'cooling' else ''}, "
                                 f"got {getattr(self, name)!r}")
            set_(name, v)
        for name in ("refine", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.points, bool) or self.points not in POINTS:
            raise InputError(f"points must be one of {list(POINTS)} (pseudo-points per cluster), got {self.points!r}")
        set_("points", int(self.points))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.weight, str) or not self.weight or self.weight.startswith(_P):
            raise InputError(f"weight must be a column name not starting with {_P!r}, got {self.weight!r}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}



def lds_spec(weight: str = "weight", seed: int = 0, **options) -> LdsSpec:
    """The validated :class:`LdsSpec` for ``duckquash.squash(..., method="lds", formula=..., size=...)``."""
    allowed = set(LdsSpec.__dataclass_fields__) - {"weight", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for method='lds'; it takes {sorted(allowed)}")
    if "formula" not in options or "size" not in options:
        raise InputError("method='lds' needs formula='y ~ ...' and size=M (the number of pseudo-points)")
    return LdsSpec(weight=weight, seed=seed, **options)
