"""A fitted GLM with statsmodels' names: parameters, standard errors, tests, fit statistics, prediction.

As statsmodels returns them for formula models, ``params``, ``bse``, ``tvalues`` and ``pvalues``
are pandas Series indexed by the design column names (``res.params["x1"]``), and ``conf_int()``
and ``cov_params()`` DataFrames with those names as index (and columns). ``.to_numpy()`` gives
the plain arrays without a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.source import resolve
from ..sql.build import linear_predictor
from ..sql.quote import ident
from . import families as fam
from .formula import Design

COV_TYPES = ("nonrobust", "HC0", "HC1")


@dataclass(frozen=True, eq=False)
class GLMResults:
    """A fitted GLM with statsmodels' names; everything derived is computed lazily from the sums.

    ``nobs`` is the sum of frequency weights (statsmodels' ``wnobs``); ``n_rows`` the number of
    complete rows used and ``n_dropped`` the rows dropped for missing values.

    ``params`` (given as an array) is stored as a Series indexed by ``exog_names``; ``bse``,
    ``tvalues``, ``pvalues`` are Series and ``conf_int()``, ``cov_params()`` DataFrames with the
    same labels. ``normalized_cov_params`` stays an array (as in statsmodels).
    """

    family: str
    design: Design
    params: pd.Series
    normalized_cov_params: np.ndarray
    scale: float
    llf: float
    deviance: float
    nobs: float
    n_rows: int
    n_dropped: int
    df_resid: float
    df_model: float
    converged: bool
    n_iter: int
    cov_type: str = "nonrobust"
    meat: np.ndarray | None = field(default=None, repr=False)
    weight: str | None = None
    weight_note: str = ""
    n_passes: int = 0

    def __post_init__(self) -> None:
        beta = np.asarray(self.params, dtype=float).reshape(-1)  # a Series keeps its values, gets our labels
        if beta.shape[0] != len(self.design.names):
            raise InputError(f"{beta.shape[0]} coefficients for {len(self.design.names)} design columns")
        object.__setattr__(self, "params", pd.Series(beta, index=self._index))

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(list(self.design.names))

    def _series(self, values: np.ndarray) -> pd.Series:
        return pd.Series(values, index=self._index)

    @property
    def exog_names(self) -> list[str]:
        return list(self.design.names)

    @property
    def endog_name(self) -> str | None:
        return self.design.response_name

    def cov_params(self) -> pd.DataFrame:
        """Covariance of the coefficients: ``scale * (X'WX)^-1``, or the HC0/HC1 sandwich, as a
        DataFrame with the design column names as index and columns.

        HC0 counts each row F times (equal to statsmodels' HC0 on the rows repeated F times);
        HC1 multiplies HC0 by ``nobs / (nobs - k)`` as OLS does (statsmodels' GLM HC1 omits
        that factor and equals its HC0).
        """
        return pd.DataFrame(self._cov, index=self._index, columns=self._index)

    @cached_property
    def _cov(self) -> np.ndarray:
        if self.cov_type == "nonrobust":
            return self.scale * self.normalized_cov_params
        bread = self.normalized_cov_params
        cov = bread @ self.meat @ bread
        if self.cov_type == "HC1":
            k = len(self.params)
            cov = cov * self.nobs / (self.nobs - k)
        return cov

    @cached_property
    def bse(self) -> pd.Series:
        """Standard errors, a Series indexed by the design column names."""
        return self._series(np.sqrt(np.diag(self._cov)))

    @cached_property
    def tvalues(self) -> pd.Series:
        return self._series(self.params.to_numpy() / self.bse.to_numpy())

    @cached_property
    def pvalues(self) -> pd.Series:
        """Two-sided normal p-values (statsmodels GLM default, ``use_t=False``)."""
        from scipy.stats import norm  # lazy: scipy.stats costs ~1 s of import time

        return self._series(2.0 * norm.sf(np.abs(self.tvalues.to_numpy())))

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Normal-theory confidence limits: a ``(k, 2)`` DataFrame indexed by the design column
        names, columns ``0`` (lower) and ``1`` (upper) as statsmodels."""
        from scipy.stats import norm

        q = norm.ppf(1 - alpha / 2)
        b, se = self.params.to_numpy(), self.bse.to_numpy()
        return pd.DataFrame(np.column_stack([b - q * se, b + q * se]), index=self._index, columns=[0, 1])

    @property
    def aic(self) -> float:
        """``-2 llf + 2 (df_model + 1)`` as statsmodels."""
        return -2.0 * self.llf + 2.0 * (self.df_model + 1)

    @property
    def bic_llf(self) -> float:
        """``-2 llf + (df_model + 1) log(nobs)``; statsmodels' current ``bic``."""
        return -2.0 * self.llf + (self.df_model + 1) * math.log(self.nobs)

    @property
    def bic(self) -> float:
        """Log-likelihood based BIC (= :attr:`bic_llf`, statsmodels' current definition)."""
        return self.bic_llf

    @property
    def bic_deviance(self) -> float:
        """Deviance based BIC: ``deviance - df_resid log(nobs)`` (statsmodels' old ``bic``)."""
        return self.deviance - self.df_resid * math.log(self.nobs)

    def predict(self, con: duckdb.DuckDBPyConnection, source: Any) -> duckdb.DuckDBPyRelation:
        """The source's rows plus column ``predicted`` (mean scale), computed in SQL.

        Rows with a missing model variable get NULL. A categorical level not seen in the fit
        counts as the reference level (all its dummy columns are 0).
        """
        expr = f"CASE WHEN {self._predictors_where()} THEN {fam.mean_sql(self.family, self._eta_sql())} END"
        if isinstance(source, duckdb.DuckDBPyRelation):
            return source.project(f"*, {expr} AS predicted")
        src = resolve(con, source)
        missing = [v for v in self.design.predictors if v not in src.columns]
        if missing:
            raise InputError(f"{src.label} lacks the model variable(s) {missing}")
        return con.sql(f"SELECT *, {expr} AS predicted FROM {src.sql}")

    def _eta_sql(self) -> str:
        return linear_predictor(self.params.to_numpy(), self.design.exprs)

    def _predictors_where(self) -> str:
        return " AND ".join(f"{ident(v)} IS NOT NULL" for v in self.design.predictors) or "TRUE"

    def summary(self) -> str:
        """A readable text table: fit statistics, then one line per coefficient."""
        lines = [f"GLM  family={self.family}  response={self.design.response_name}  cov_type={self.cov_type}",
                 f"nobs (sum of weights)={self.nobs:,.6g}  rows used={self.n_rows:,}  rows dropped={self.n_dropped:,}",
                 f"df_model={self.df_model:g}  df_resid={self.df_resid:,.6g}  scale={self.scale:.6g}",
                 f"llf={self.llf:.6f}  deviance={self.deviance:.6f}  aic={self.aic:.4f}  bic(llf)={self.bic:.4f}",
                 f"converged={self.converged}  iterations={self.n_iter}  SQL passes={self.n_passes}"]
        if self.weight:
            lines.append(f"frequency weights: column {self.weight!r}{self.weight_note}")
        elif self.weight_note:
            lines.append(self.weight_note)
        ci = self.conf_int().to_numpy()
        w = max([len(n) for n in self.exog_names] + [9])
        lines.append("")
        lines.append(f"{'':{w}s} {'coef':>12s} {'std err':>11s} {'z':>9s} {'P>|z|':>8s} {'[0.025':>11s} {'0.975]':>11s}")
        lines.append("-" * (w + 69))
        for n, b, s, t, p, (lo, hi) in zip(self.exog_names, self.params, self.bse, self.tvalues, self.pvalues, ci):
            lines.append(f"{n:{w}s} {b:12.6g} {s:11.4g} {t:9.3f} {p:8.3g} {lo:11.4g} {hi:11.4g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
