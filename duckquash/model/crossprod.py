"""A formula's cross-products X'WX and X'Wy from one SQL pass, and the matrix facts users ask of them.

The user's own problem (shared/seeds/000) builds a patsy design chunk by chunk to "perform matrix
computations (e.g. an SVD) and fit the regression". Everything an SVD of X tells about the design
(singular values, right singular vectors, condition number, rank) is in X'X: the singular values
of X are the square roots of X'X's eigenvalues, its right singular vectors X'X's eigenvectors. So
one aggregate pass over any source gives them without materialising X.

Sums are compensated DOUBLE sums (``fsum``): the same source gives the same matrix run after run,
and a column with a large mean does not lose its spread to cancellation in X'X.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import duckdb
import numpy as np

from ..errors import InputError
from ..io.source import resolve
from ..sql.quote import comma, ident
from .formula import Design, build_design
from .irls import MAX_COLUMNS, check_weight_column


@dataclass(frozen=True, eq=False)
class CrossProduct:
    """X'WX (``xtx``) and X'Wy (``xty``, None without a left-hand side) of a formula's design.

    ``nobs`` is the sum of weights (rows when unweighted) and ``n_rows`` the complete rows used;
    rows with a missing or non-finite model value are dropped, as ``glm`` does.
    """

    names: tuple[str, ...]
    xtx: np.ndarray
    xty: np.ndarray | None
    yty: float | None
    nobs: float
    n_rows: int
    n_dropped: int
    response_name: str | None = None
    weight: str | None = None

    @cached_property
    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        vals, vecs = np.linalg.eigh(self.xtx)
        order = np.argsort(vals)[::-1]
        return np.clip(vals[order], 0.0, None), vecs[:, order]

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues of X'WX (largest first) and the eigenvectors as columns (rows: ``names``)."""
        vals, vecs = self._eigh
        return vals.copy(), vecs.copy()

    @property
    def singular_values(self) -> np.ndarray:
        """Singular values of W^(1/2) X, largest first: sqrt of X'WX's eigenvalues."""
        return np.sqrt(self._eigh[0])

    @property
    def right_singular_vectors(self) -> np.ndarray:
        """V of the SVD X = U S V' (columns, in the order of ``singular_values``; signs arbitrary)."""
        return self._eigh[1].copy()

    @property
    def rank(self) -> int:
        """Numerical rank: singular values above ``s_max * sqrt(1000 k eps)``.

        X'X holds the squares of the singular values, so it resolves them only down to about
        ``sqrt(eps) s_max`` (1.5e-8 s_max); an exactly collinear column shows up as ~1e-8 s_max,
        not 0 (numpy's ``matrix_rank`` tolerance on X itself, ``s_max * n * eps``, would count it).
        """
        s = self.singular_values
        if s.size == 0 or s[0] == 0:
            return 0
        return int(np.sum(s > s[0] * np.sqrt(1000 * len(s) * np.finfo(float).eps)))

    @property
    def condition_number(self) -> float:
        """Largest over smallest singular value of X; inf when the design is rank-deficient."""
        s = self.singular_values
        return float(s[0] / s[-1]) if s.size and self.rank == len(s) else float("inf")

    def solve(self) -> np.ndarray:
        """Least-squares coefficients solving X'WX b = X'Wy (minimum-norm when rank-deficient)."""
        if self.xty is None:
            raise InputError("the formula has no left-hand side, so there is no X'y to solve for")
        return np.linalg.lstsq(self.xtx, self.xty, rcond=None)[0]

    def frame(self):
        """X'WX as a pandas DataFrame labelled by the design column names."""
        import pandas as pd

        return pd.DataFrame(self.xtx, index=list(self.names), columns=list(self.names))

    def summary(self) -> str:
        s = self.singular_values
        lines = [f"X'X of {len(self.names)} design columns over {self.n_rows:,} rows"
                 + (f" (weights {self.weight!r}, sum {self.nobs:,.6g})" if self.weight else "")
                 + (f"; {self.n_dropped:,} rows dropped for missing values" if self.n_dropped else ""),
                 f"rank {self.rank} of {len(self.names)}, condition number {self.condition_number:.4g}",
                 "singular values: " + ", ".join(f"{v:.6g}" for v in s)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CrossProduct {len(self.names)} columns, rank {self.rank}, {self.n_rows:,} rows>"


def crossprod(con: duckdb.DuckDBPyConnection, source: Any, formula: str, *, weight: str | None = None,
              levels: Mapping[str, Any] | None = None) -> CrossProduct:
    """X'WX and X'Wy of ``formula``'s design over ``source`` in one SQL pass (levels: one more).

    ``formula`` may have no left-hand side (``"~ a + b + a:b"``); ``weight`` names a column of
    frequency weights. The design's SVD facts (singular values, V, rank, condition number) follow
    from X'X; see :class:`CrossProduct`.
    """
    src = resolve(con, source)
    try:
        design = build_design(con, src.sql, formula, levels=levels, columns=src.columns)
        if design.k > MAX_COLUMNS:
            raise InputError(f"the design of {formula!r} has {design.k} columns; at most {MAX_COLUMNS} are supported "
                             f"({design.k * (design.k + 1) // 2:,} sums in one pass)")
        if weight is not None:
            check_weight_column(src, weight)
        return _crossprod(con, src.sql, design, weight)
    finally:
        src.close()


def _crossprod(con: duckdb.DuckDBPyConnection, from_sql: str, design: Design, weight: str | None) -> CrossProduct:
    k, x = design.k, [f"({e})" for e in design.exprs]
    w = f"({ident(weight)})::DOUBLE" if weight else None
    wx = [f"{w} * {e}" for e in x] if w else x
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    aggs = [f"fsum({wx[i]} * {x[j]})" for i, j in pairs]
    y = f"({design.response})" if design.response is not None else None
    if y is not None:
        aggs += [f"fsum({wx[i]} * {y})" for i in range(k)] + [f"fsum({w + ' * ' if w else ''}{y} * {y})"]
    aggs += [f"fsum({w})" if w else "count(*)::DOUBLE", "count(*)"]
    where = design.where + (f" AND {w} IS NOT NULL AND isfinite({w})" if w else "")
    sql = (f"SELECT {comma(aggs)}, (SELECT count(*) FROM {from_sql}) FROM {from_sql} WHERE {where}")
    row = con.execute(sql).fetchone()
    xtx = np.zeros((k, k))
    for (i, j), v in zip(pairs, row):
        xtx[i, j] = xtx[j, i] = v if v is not None else 0.0
    rest = row[len(pairs):]
    xty = yty = None
    if y is not None:
        xty = np.array([v if v is not None else 0.0 for v in rest[:k]], dtype=float)
        yty, rest = float(rest[k] or 0.0), rest[k + 1:]
    nobs, n_rows, total = float(rest[0] or 0.0), int(rest[1]), int(rest[2])
    if n_rows == 0:
        raise InputError("no complete rows: every row has a missing or non-finite value in the formula's variables")
    return CrossProduct(names=design.names, xtx=xtx, xty=xty, yty=yty, nobs=nobs, n_rows=n_rows,
                        n_dropped=total - n_rows, response_name=design.response_name, weight=weight)
