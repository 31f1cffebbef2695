"""How many pseudo-points a region gets, from its rows and the columns that vary in it."""
from __future__ import annotations

import numpy as np

MIN_REDUCTION = 5  # adaptive regions: the covariance floor (d + 1 points) never keeps more than N_r / 5


def n_points(n: np.ndarray, d: np.ndarray, alpha: float, method: str, exact_covariance: bool = True) -> np.ndarray:
    """Points per region: ``max(1, ceil(alpha * log2 N_r))`` (DuMouchel et al.), raised to ``d_r + 1``
    so the covariance can be matched exactly (``exact_covariance``), never more than ``N_r``.

    Adaptive regions raise only up to ``N_r / MIN_REDUCTION``: a region of 100 rows in 20 columns
    gets 20 points (means and variances exact) rather than 21 (covariance exact too), so that every
    region reduces at least 5-fold. ``alpha = 0`` gives one point (the mean) per region.
    """
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=np.int64)
    if alpha == 0:
        return np.ones(n.shape, dtype=np.int64)
    m = np.maximum(1, np.ceil(alpha * np.log2(np.maximum(n, 1.0)) - 1e-12)).astype(np.int64)
    if exact_covariance:
        floor = d + 1 if method != "adaptive" else np.minimum(d + 1, np.floor(n / MIN_REDUCTION).astype(np.int64))
        m = np.maximum(m, np.minimum(n.astype(np.int64), floor))
    m = np.minimum(m, np.maximum(n, 1).astype(np.int64))
    return np.where(d == 0, 1, m)
