"""The central composite design in whitened standard-error units, and its fractional corners."""
from __future__ import annotations

import math

import numpy as np


def fractional_corners(p: int, max_full: int = 5) -> np.ndarray:
    """Factorial corners (+-1) for p factors: the full 2^p when p <= ``max_full``, otherwise a
    resolution IV fraction: the fold-over of a saturated resolution III design with 2^r >= p + 1
    runs (base factors plus products of them), 2^(r+1) runs in all (p = 10: 32, p = 50: 128)."""
    if p <= max_full:
        grid = np.array(np.meshgrid(*[[-1.0, 1.0]] * p, indexing="ij")).reshape(p, -1).T
        return grid
    r = max(1, math.ceil(math.log2(p + 1)))
    base = np.array(np.meshgrid(*[[-1.0, 1.0]] * r, indexing="ij")).reshape(r, -1).T  # 2^r x r
    subsets = [s for s in range(1, 2 ** r)]
    # singletons (the base factors) first, then the highest-order interactions (best aliasing)
    subsets.sort(key=lambda s: (bin(s).count("1") != 1, -bin(s).count("1"), s))
    cols = [np.prod(base[:, [j for j in range(r) if s >> j & 1]], axis=1) for s in subsets[:p]]
    half = np.stack(cols, axis=1)
    return np.vstack([half, -half])


def ccd(p: int, ds: float, df: float) -> np.ndarray:
    """Central composite design in whitened units: the centre, star points +-ds on each axis and
    factorial corners at distance df from the centre (+-df / sqrt(p) on each axis), so every design
    point lies within df or ds standard errors of theta_0 whatever p is. The earlier corners at +-2
    on each axis (distance 6.3 for p = 10) gave similar accuracy (see :class:`LdsSpec`), but profiles
    that a second-order expansion cannot follow on 10M rows (errors up to 1.3% of a spread)."""
    star = np.vstack([ds * np.eye(p), -ds * np.eye(p)])
    return np.vstack([np.zeros((1, p)), star, df / math.sqrt(p) * fractional_corners(p)])
