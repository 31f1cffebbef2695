"""The k x k linear algebra of a GLM fit: normal equations scaled to unit diagonal, Cholesky,
an eigenvalue rank check that names collinear columns, solves and inverses."""
from __future__ import annotations

import numpy as np
import scipy.linalg

from ..errors import InputError

RANK_TOL = 1e-11  # smallest/largest eigenvalue of the unit-diagonal X'WX below this: collinear


def scaled_factor(A: np.ndarray, names: tuple[str, ...], check_rank: bool, basis: np.ndarray | None = None):
    """Cholesky of A scaled to unit diagonal; with ``check_rank``, collinear columns are an InputError."""
    d = np.diag(A).copy()
    zero = [names[i] for i in range(len(d)) if not (d[i] > 0 and np.isfinite(d[i]))]
    if zero and not check_rank:
        raise np.linalg.LinAlgError(f"X'WX has a zero diagonal for {zero}")
    if zero:
        raise InputError(f"design column(s) {zero} are zero, or constant next to the intercept, on the rows used (perfectly collinear)")
    s = np.sqrt(d)
    As = A / np.outer(s, s)
    if check_rank:
        w, V = np.linalg.eigh(As)
        if w[0] <= RANK_TOL * w[-1]:
            small = V[:, w <= RANK_TOL * w[-1]] / s[:, None]   # null vectors of the working columns
            if basis is not None:  # back to the original (uncentred) columns, scaled to unit length
                Minv = np.linalg.inv(basis)
                small = (basis @ small) * np.sqrt(np.abs(np.diag(Minv.T @ A @ Minv)))[:, None]
            else:
                small = small * s[:, None]
            small = small / np.max(np.abs(small), axis=0)
            involved = [names[i] for i in range(len(names)) if np.max(np.abs(small[i])) > 1e-6]
            raise InputError(f"the design is rank deficient: columns {involved} are perfectly collinear "
                             f"(rank {int(np.sum(w > RANK_TOL * w[-1]))} of {len(names)}); drop one of them")
    cf = scipy.linalg.cho_factor(As)
    return cf, s


def solve(cf, s, b):
    return scipy.linalg.cho_solve(cf, b / s) / s


def inverse(cf, s):
    k = len(s)
    return scipy.linalg.cho_solve(cf, np.eye(k)) / np.outer(s, s)
