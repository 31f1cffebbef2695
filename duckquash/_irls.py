"""Logistic regression by IRLS where each iteration is one SQL aggregate pass (X'WX, X'Wz).

Used to fit the full table without pulling it into Python, and the squashed table the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from ._sql import comma, literal


@dataclass(frozen=True)
class LogitFit:
    params: np.ndarray
    bse: np.ndarray
    iterations: int


def logit_irls(con: duckdb.DuckDBPyConnection, from_sql: str, y: str, xs: list[str], weight: str = "1.0",
               tol: float = 1e-10, max_iter: int = 50) -> LogitFit:
    """Frequency-weighted logistic regression of SQL expression ``y`` on SQL expressions ``xs``."""
    p = len(xs)
    beta = np.zeros(p)
    pairs = [(i, j) for i in range(p) for j in range(i, p)]
    for it in range(1, max_iter + 1):
        eta = " + ".join(f"{literal(float(b))} * ({x})" for b, x in zip(beta, xs))
        inner = f"SELECT {comma(f'({x})::DOUBLE AS __x{i}' for i, x in enumerate(xs))}, ({y})::DOUBLE AS __y, " \
                f"({weight})::DOUBLE AS __w, 1.0 / (1.0 + exp(-({eta}))) AS __p FROM {from_sql}"
        aggs = [f"sum(__w * __p * (1 - __p) * __x{i} * __x{j})" for i, j in pairs]
        aggs += [f"sum(__w * (__y - __p) * __x{i})" for i in range(p)]
        row = np.array(con.sql(f"SELECT {comma(aggs)} FROM ({inner})").fetchall()[0], dtype=float)
        info = np.zeros((p, p))
        for k, (i, j) in enumerate(pairs):
            info[i, j] = info[j, i] = row[k]
        step = np.linalg.solve(info, row[len(pairs):])
        beta = beta + step
        if np.max(np.abs(step)) < tol * (1 + np.max(np.abs(beta))):
            break
    # information at the final estimate
    return LogitFit(beta, np.sqrt(np.diag(np.linalg.inv(info))), it)
