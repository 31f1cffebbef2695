"""Named SQL builders that several stages share: bins, key joins, key order, linear predictors.

Each returns SQL text from already quoted expressions or raw names (which it quotes); nothing
here runs a query.
"""
from __future__ import annotations

from typing import Sequence

from .quote import comma, ident, literal


def case_bins(expr: str, edges: Sequence[float]) -> str:
    """``CASE`` chain giving the 0-based bin of ``expr`` for ascending interior edges; NULL stays NULL.

    Bins are half-open ``[e_k, e_{k+1})`` with open outer bins, so any finite value lands in one.
    """
    if not edges:
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE 0 END::SMALLINT"
    whens = " ".join(f"WHEN {expr} < {literal(float(e))} THEN {k}" for k, e in enumerate(edges))
    return f"CASE WHEN {expr} IS NULL THEN NULL {whens} ELSE {len(edges)} END::SMALLINT"


def key_match(a: str, b: str, keys: Sequence[str]) -> str:
    """Join condition equating key columns of aliases ``a`` and ``b``, NULL matching NULL."""
    return " AND ".join(f"{a}.{ident(k)} IS NOT DISTINCT FROM {b}.{ident(k)}" for k in keys) or "TRUE"


def key_order(keys: Sequence[str], alias: str = "") -> str:
    """``ORDER BY`` list for region keys, NULLs first (the region order every stage uses)."""
    pre = f"{alias}." if alias else ""
    return comma(f"{pre}{ident(k)} NULLS FIRST" for k in keys)


def linear_predictor(params: Sequence[float], exprs: Sequence[str]) -> str:
    """``b_0 * (x_0) + b_1 * (x_1) + ...`` over design expressions; ``0.0`` for an empty design."""
    return " + ".join(f"{literal(float(b))} * ({x})" for b, x in zip(params, exprs)) or "0.0"
