"""Evaluate reductions: fit one model on the full table and on each reduced table, compare.

The protocol of DuMouchel et al. (1999) and Madigan et al. (REFERENCE.md section 3):
``z_j = (beta_reduced_j - beta_full_j) / SE_full_j`` and ``MSE = mean_j z_j^2``; a uniform
sample of M of N rows has ``E[z_j^2] ~ N/M - 1``. Predictions are compared on every full-data row
in one SQL pass: ``(mu_reduced - mu_full) * 10^4`` (mean scale), summarised by mean, sd
(sample, ddof = 1), min and max. Every reduced table is fitted with the full fit's design (same
columns and levels) and its own frequency-weight column.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Mapping

import duckdb
import numpy as np
import pyarrow as pa

from ..api import glm
from ..ds.results import SquashResult
from ..errors import DuckquashWarning, InputError
from ..io.source import drain_pending, resolve
from ..model.families import mean_sql
from ..model.irls import fit_design
from ..sql.build import linear_predictor
from ..sql.quote import comma, ident
from ..views.build import ViewResult
from .sample import SampleResult

COLUMNS = ("method", "M", "reduction", "mse", "max_abs_z", "resid_mean_1e4", "resid_sd_1e4",
           "resid_min_1e4", "resid_max_1e4", "fit_seconds")
_HEADERS = ("method", "M", "N/M", "MSE(z)", "max|z|", "resid mean", "resid sd", "resid min", "resid max",
            "fit s")


def _as_source(obj: object) -> object:
    """A SquashResult/SampleResult/ViewResult stands for its table (or file); anything else is passed
    to ``resolve`` as it is (a DataFrame is never asked for attributes: its columns could answer)."""
    if isinstance(obj, (SquashResult, SampleResult, ViewResult)):
        path = getattr(obj, "path", None)
        if path is not None:
            return path
        parts = obj.parts or ((obj.table,) if hasattr(obj, "table") else (obj.name,))
        return ".".join(parts) if len(parts) == 1 else "SELECT * FROM " + ".".join(ident(p) for p in parts)
    return obj


def _fmt(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.3g}"
    return f"{v:,.4g}" if a >= 100 else f"{v:.4f}" if a < 10 else f"{v:.3f}"


@dataclass(frozen=True)
class Evaluation:
    """Per-method accuracy of reduced-table fits against the full-data fit.

    ``table``: one row per method with :data:`COLUMNS`; ``z``: one row per (method, term) with
    the standardised error; ``full``: the full-data GLMResults.
    """

    table: pa.Table
    z: pa.Table
    full: object = field(repr=False)
    n_rows: float
    formula: str
    family: str
    full_fit_seconds: float
    fits: dict = field(repr=False, default_factory=dict)

    def rows(self) -> list[list[str]]:
        return [[_fmt(v) for v in row.values()] for row in self.table.to_pylist()]

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(_HEADERS) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows()]
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = [list(_HEADERS)] + self.rows()
        widths = [max(len(r[k]) for r in rows) for k in range(len(_HEADERS))]
        fmt = lambda r: "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        head = (f"{self.family} GLM {self.formula!r} on N = {self.n_rows:,.0f} rows "
                f"(full fit {self.full_fit_seconds:.2f}s); z = (beta - beta_full) / SE_full; "
                "prediction residuals x 1e4")
        return "\n".join([head, fmt(rows[0])] + [fmt(r) for r in rows[1:]])

    def plot(self, path: str, title: str | None = None) -> str:
        """Standardised error per coefficient, one symbol per method (DuMouchel et al. Figure 1)."""
        return plot_z(self.z, path, title or f"{self.formula}  (N = {self.n_rows:,.0f})")


def plot_z(z: pa.Table, path: str, title: str = "") -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'duckquash[plot]'") from None
    methods = list(dict.fromkeys(z.column("method").to_pylist()))
    terms = list(dict.fromkeys(z.column("term").to_pylist()))
    markers = "os^Dvx+*<>ph"
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(terms) + 3.5), 4.5))
    zz = z.to_pydict()
    for k, m in enumerate(methods):
        pts = [(terms.index(t), v) for mm, t, v in zip(zz["method"], zz["term"], zz["z"]) if mm == m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], markers[k % len(markers)], label=m, alpha=0.8,
                fillstyle="none")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(terms)))
    ax.set_xticklabels(terms, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("(beta_reduced - beta_full) / SE_full")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left", borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _eta(design, params: np.ndarray) -> str:
    return linear_predictor(params, design.exprs)


def evaluate(con: duckdb.DuckDBPyConnection, full: object, reduced: Mapping[str, object], formula: str,
             family: str = "binomial", plot: str | None = None, *, weight: str = "weight",
             levels: dict | None = None) -> Evaluation:
    """Fit ``formula`` on ``full`` once and on each reduced table; report how close each comes.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
    full : source
        The full data: anything :func:`duckquash.squash` takes (table, file, glob, query,
        relation, pandas/polars DataFrame, pyarrow object). It is resolved once and read twice
        (the fit, then the prediction pass), so a RecordBatchReader works (read into a TEMP table).
    reduced : dict of label -> source
        Squashed or sampled tables (or their SquashResult/SampleResult, also when written to a
        file, or DataFrames / Arrow tables), each with a frequency-weight column ``weight``. A
        reduced table lacking a column the formula needs is an error naming the column.
    formula, family : str
        The model, as for :func:`duckquash.glm`.
    plot : str, optional
        Write a PNG of the standardised errors per coefficient here (needs matplotlib).
    weight : str
        Weight column of the reduced tables.
    levels : dict, optional
        Names usable inside the formula.

    Returns
    -------
    Evaluation
        ``table`` (pyarrow, one row per method), ``z``, ``full``; ``str()`` and ``to_markdown()``.
    """
    if not isinstance(reduced, Mapping) or not reduced:
        raise InputError("reduced must be a non-empty dict mapping labels to reduced tables")
    for label in reduced:
        if not isinstance(label, str) or not label:
            raise InputError(f"reduced labels must be non-empty strings, got {label!r}")
    full = drain_pending(con, full)  # a reader holding con's open result is read first
    reduced = {k: drain_pending(con, v) for k, v in reduced.items()}
    full_src = resolve(con, _as_source(full))  # once: a one-shot source (RecordBatchReader) is read once
    try:
        return _evaluate(con, full, full_src, reduced, formula, family, plot, weight, levels)
    finally:
        full_src.close()


def _missing(e: duckdb.Error) -> str | None:
    """The column a DuckDB binder error says is missing, if it names one."""
    m = re.search(r'[Rr]eferenced column "?([^"\s]+?)"? not found', str(e))
    return m.group(1) if m else None


def _binder(e: duckdb.Error, what: str, columns: dict) -> InputError:
    """A DuckDB binder error as an InputError naming the missing column and the table's columns."""
    col = _missing(e)
    head = f"{what} has no column {col!r}" if col else f"the model cannot be evaluated on {what}"
    return InputError(f"{head} (the formula needs it); it has {list(columns)}"
                      + ("" if col else f" ({str(e).splitlines()[0][:200]})"))


def _evaluate(con, full, full_src, reduced, formula, family, plot, weight, levels) -> Evaluation:
    t0 = time.perf_counter()
    # a name or query goes to glm() as it is (a materialised view answers from its moments)
    arg = _as_source(full)
    try:
        full_fit = glm(con, arg if isinstance(arg, (str, tuple)) else full_src, formula, family, levels=levels)
    except duckdb.BinderException as e:
        raise _binder(e, f"the full data ({full_src.label})", full_src.columns) from None
    full_seconds = time.perf_counter() - t0
    design = full_fit.design
    fam = full_fit.family if isinstance(getattr(full_fit, "family", None), str) else family
    beta_f, se_f = np.asarray(full_fit.params, float), np.asarray(full_fit.bse, float)
    names = list(full_fit.exog_names)
    fits, stats, zrows = {}, [], {"method": [], "term": [], "z": []}
    for label, red in reduced.items():
        src = resolve(con, _as_source(red))
        try:
            if weight not in src.columns:
                raise InputError(f"reduced table {label!r} ({src.label}) has no weight column {weight!r}")
            lacking = [v for v in design.variables if v not in src.columns]
            if lacking:
                raise InputError(f"reduced table {label!r} ({src.label}) has no column(s) {lacking} (the formula "
                                 f"needs them); it has {list(src.columns)}")
            m = con.execute(f"SELECT count(*) FROM {src.sql}").fetchall()[0][0]
            t1 = time.perf_counter()
            try:
                fit = fit_design(con, src.sql, design, fam, weight_sql=ident(weight), start=beta_f)
            except duckdb.BinderException as e:
                raise _binder(e, f"reduced table {label!r} ({src.label})", src.columns) from None
            except InputError as e:  # the reduced table cannot estimate the model (e.g. a level it lacks)
                warnings.warn(DuckquashWarning(f"the model cannot be fitted on {label!r}: {e}"), stacklevel=2)
                fit = None
            secs = time.perf_counter() - t1
        finally:
            src.close()
        if fit is None:
            zrows["method"] += [label] * len(names)
            zrows["term"] += names
            zrows["z"] += [float("nan")] * len(names)
            stats.append((label, int(m), float("inf"), float("inf"), secs))
            continue
        fits[label] = fit
        z = (np.asarray(fit.params, float) - beta_f) / se_f
        zrows["method"] += [label] * len(z)
        zrows["term"] += names
        zrows["z"] += [float(v) for v in z]
        stats.append((label, int(m), float(np.mean(z ** 2)), float(np.max(np.abs(z))), secs))
    # prediction residuals on every full-data row, all methods in one pass
    src = full_src
    where = getattr(design, "where", None) or (
        " AND ".join(f"{ident(v)} IS NOT NULL" for v in design.variables) or "TRUE")
    mu_full = mean_sql(fam, _eta(design, beta_f))
    diffs = [f"(({mean_sql(fam, _eta(design, np.asarray(f.params, float)))}) - __dq_mu) * 10000.0"
             for f in fits.values()]
    inner = (f"SELECT {comma(f'{d} AS __dq_d{k}' for k, d in enumerate(diffs))} "
             f"FROM (SELECT *, {mu_full} AS __dq_mu FROM {src.sql} WHERE {where})")
    aggs = [f"avg(__dq_d{k}), stddev_samp(__dq_d{k}), min(__dq_d{k}), max(__dq_d{k})"
            for k in range(len(diffs))]
    row = con.execute(f"SELECT {comma(aggs)} FROM ({inner})").fetchall()[0] if diffs else ()
    n_full = float(full_fit.nobs)
    cols = {c: [] for c in COLUMNS}
    slot = {label: k for k, label in enumerate(fits)}  # position of each fitted method in the residual pass
    for label, m, mse, mz, secs in stats:
        k = slot.get(label)
        resid = row[4 * k: 4 * k + 4] if k is not None else [None] * 4
        vals = [label, m, n_full / m, mse, mz, *[float(v) if v is not None else float("nan") for v in resid], secs]
        for c, v in zip(COLUMNS, vals):
            cols[c].append(v)
    table = pa.table({c: pa.array(v, pa.string() if c == "method" else pa.int64() if c == "M" else pa.float64())
                      for c, v in cols.items()})
    ev = Evaluation(table, pa.table(zrows), full_fit, n_full, formula, str(fam), full_seconds, fits)
    if plot is not None:
        ev.plot(plot)
    return ev
