"""GLM families as SQL: inverse link, IRLS weight and score terms, per-row log-likelihood and deviance.

Only canonical links: gaussian/identity, binomial/logit, poisson/log. With a canonical link the IRLS
weight is ``var(mu)`` and the score of one row is ``x (y - mu)``, so a Newton step is
``(X'WX)^-1 X'F(y - mu)`` with F the frequency weights. Log-likelihoods follow statsmodels'
``family.loglike_obs`` (scale 1 for binomial and poisson; the gaussian llf is profiled over the
scale, see :func:`gaussian_llf`).
"""
from __future__ import annotations

import math

from ..errors import InputError

FAMILIES = ("gaussian", "binomial", "poisson")


def check_family(family: str) -> str:
    if not isinstance(family, str) or family.lower() not in FAMILIES:
        raise InputError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    return family.lower()


def mean_sql(family: str, eta: str) -> str:
    """Inverse link: the mean as SQL from the linear predictor ``eta``."""
    family = check_family(family)
    if family == "gaussian":
        return f"({eta})"
    if family == "binomial":
        return f"(1.0 / (1.0 + exp(-({eta}))))"
    return f"exp({eta})"


def variance_sql(family: str, mu: str) -> str:
    """Variance function V(mu); for canonical links also the IRLS weight (before frequency weights)."""
    family = check_family(family)
    if family == "gaussian":
        return "1.0"
    if family == "binomial":
        return f"(({mu}) * (1.0 - ({mu})))"
    return f"({mu})"


def loglik_sql(family: str, y: str, eta: str) -> str:
    """Per-row log-likelihood (frequency weight not applied), statsmodels' ``loglike_obs`` at scale 1.

    Gaussian: ``-((y-eta)^2 + log(2 pi)) / 2`` (unit scale; the fitted llf uses :func:`gaussian_llf`).
    Binomial: ``y*eta - log(1 + exp(eta))``, computed without overflow.
    Poisson: ``y*eta - exp(eta) - lgamma(y+1)``.
    """
    family = check_family(family)
    if family == "gaussian":
        return f"(-0.5 * (pow(({y}) - ({eta}), 2) + {math.log(2 * math.pi)!r}))"
    if family == "binomial":
        # log(1 + exp(eta)) = max(eta, 0) + log(1 + exp(-|eta|))
        return (f"(({y}) * ({eta}) - (greatest(({eta}), 0.0) + ln(1.0 + exp(-abs({eta})))))")
    return f"(({y}) * ({eta}) - exp({eta}) - lgamma(({y}) + 1.0))"


def deviance_sql(family: str, y: str, eta: str) -> str:
    """Per-row unit deviance (frequency weight not applied), statsmodels' ``family.resid_dev**2``."""
    family = check_family(family)
    if family == "gaussian":
        return f"pow(({y}) - ({eta}), 2)"
    if family == "binomial":  # y in {0, 1}: -2 * loglik
        return f"(-2.0 * {loglik_sql('binomial', y, eta)})"
    return (f"(2.0 * (CASE WHEN ({y}) > 0 THEN ({y}) * (ln({y}) - ({eta})) ELSE 0.0 END "
            f"- (({y}) - exp({eta}))))")


def gaussian_llf(deviance: float, nobs: float) -> float:
    """statsmodels' gaussian llf: profiled over the scale, ``scale = deviance / nobs``."""
    scale = deviance / nobs
    return -0.5 * nobs * (math.log(2 * math.pi * scale) + 1.0)


def start_eta_sql(family: str, y: str) -> str:
    """Linear predictor of statsmodels' starting mean: binomial ``(y+0.5)/2``, poisson ``y + 0.5``."""
    family = check_family(family)
    if family == "binomial":
        return f"ln((({y}) + 0.5) / (1.5 - ({y})))"
    if family == "poisson":
        return f"ln(({y}) + 0.5)"
    return f"({y})"


def response_check_sql(family: str, y: str) -> str | None:
    """SQL condition that is TRUE for a response value the family cannot take."""
    family = check_family(family)
    if family == "binomial":
        return f"({y}) NOT IN (0.0, 1.0)"
    if family == "poisson":
        return f"({y}) < 0.0"
    return None
