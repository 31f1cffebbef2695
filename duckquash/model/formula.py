"""Wilkinson/patsy formulas to SQL: each design column becomes one DOUBLE expression over the source.

formulaic parses the formula and decides everything a formula means (term order, which terms get
full- or reduced-rank categorical coding, column names, contrast matrices). duckquash only

1. translates each factor's Python expression (``x``, ``np.log(x)``, ``I(x**2)``, ``C(a, Sum)``)
   into SQL with :mod:`ast` (a whitelist; anything else is an :class:`InputError` naming it),
2. finds the distinct levels of every categorical variable in ONE SQL pass over the source,
3. lets formulaic build the model spec on a tiny synthetic frame holding those levels, and reads
   the scoped terms and coding matrices off the spec to write one SQL expression per column,
4. checks those expressions, evaluated by DuckDB on the synthetic frame, against formulaic's own
   matrix, so a translation slip is an internal error rather than a silently wrong design.
"""
from __future__ import annotations

import ast
import itertools
import re
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

import duckdb
import numpy as np
from formulaic import Formula
from formulaic.errors import FormulaicError
from formulaic.formula import SimpleFormula

from ..errors import InputError, InternalError
from ..io.source import is_numeric
from ..sql.quote import comma, ident, literal

MAX_LEVELS = 10_000
MAX_DESIGN_LEVELS = 150  # the design's column limit (model/irls.py MAX_COLUMNS), for one factor

_FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8")
_INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
              "UINTEGER", "UBIGINT", "UHUGEINT")

# numpy/math functions allowed in a formula, and their DuckDB spelling
_FUNCS = {
    "log": "ln", "exp": "exp", "sqrt": "sqrt", "abs": "abs", "log10": "log10", "log2": "log2",
    "log1p": "ln1p", "expm1": "expm1", "sin": "sin", "cos": "cos", "tan": "tan", "arctan": "atan",
    "tanh": "tanh", "square": None, "floor": "floor", "ceil": "ceil", "sign": "sign",
}
_NUMPY_PREFIXES = ("np", "numpy", "math")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMPOPS = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<=", ast.Eq: "=", ast.NotEq: "<>"}
_CONTRASTS = ("Treatment", "Sum", "Helmert", "Diff", "Poly")


@dataclass(frozen=True)
class Design:
    """A formula's design, as SQL over the source's columns.

    Attributes
    ----------
    response, response_name : SQL expression (DOUBLE) of the left-hand side and its name; None
        when the formula has no left-hand side.
    names : design column names exactly as formulaic names them (``Intercept``, ``x1:x2``,
        ``C(a)[T.1]``).
    exprs : one DOUBLE SQL expression per design column.
    variables : source columns the formula uses.
    where : SQL condition keeping complete rows: every variable non-NULL (and not NaN) and every
        design/response expression finite; statsmodels' ``missing='drop'``.
    levels : the levels found for each categorical factor, by factor expression.
    predictors : the source columns the right-hand side uses (what ``predict`` needs).
    cells : how each column factors into categorical codings times numeric factors, one entry per
        column: ``(scale, ((cat_column, ((level, value), ...)), ...), (numeric factor SQL, ...))``,
        the column being ``scale * prod(value of the row's level) * prod(numeric factors)``; what the
        per-cell IRLS pass (model/cells.py) needs. Empty when unknown.
    """

    response: str | None
    response_name: str | None
    names: tuple[str, ...]
    exprs: tuple[str, ...]
    variables: tuple[str, ...]
    where: str = "TRUE"
    levels: tuple[tuple[str, tuple], ...] = ()
    predictors: tuple[str, ...] = ()
    cells: tuple = ()

    @property
    def k(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------- factor expressions to SQL

class _Translator:
    """Translate one factor's Python expression into SQL, collecting the columns it uses."""

    def __init__(self, columns: Mapping[str, str], env: Mapping[str, Any], term: str):
        self.columns = columns
        self.env = env
        self.term = term
        self.used: list[str] = []

    def fail(self, what: str) -> InputError:
        return InputError(f"unsupported formula syntax {what!r} in term {self.term!r}; supported: columns, "
                          "+ - * / ** and comparisons inside I(), np.log/log/exp/sqrt/abs/log10/log2/..., "
                          "Q('name'), `name`, C(column[, Treatment|Treatment(reference=..)|Sum|Helmert|Diff]"
                          "[, levels=...])")

    def column(self, name: str) -> str:
        if name not in self.columns:
            raise InputError(f"unknown variable {name!r} in formula term {self.term!r}; "
                             f"the source has columns {list(self.columns)}")
        if name not in self.used:
            self.used.append(name)
        return name

    def numeric_column(self, name: str) -> str:
        self.column(name)
        typ = self.columns[name]
        if not is_numeric(typ):
            raise InputError(f"variable {name!r} (type {typ}) is used as a number in term {self.term!r}; "
                             f"wrap it in C() to use it as a categorical")
        return f"CAST({ident(name)} AS DOUBLE)"

    def sql(self, node: ast.AST) -> str:
        if isinstance(node, ast.Expression):
            return self.sql(node.body)
        if isinstance(node, ast.Name):
            return self.numeric_column(_unquote(node.id))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return literal(float(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self.sql(node.left), self.sql(node.right)
            if isinstance(node.op, ast.Pow):
                return f"pow({a}, {b})"
            return f"({a} {_BINOPS[type(node.op)]} {b})"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return f"({'-' if isinstance(node.op, ast.USub) else '+'}{self.sql(node.operand)})"
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
            a, b = self.sql(node.left), self.sql(node.comparators[0])
            return f"CAST(({a} {_CMPOPS[type(node.ops[0])]} {b}) AS DOUBLE)"
        if isinstance(node, ast.Call):
            fname = _func_name(node.func)
            if fname == "I" and len(node.args) == 1 and not node.keywords:
                return self.sql(node.args[0])
            if fname == "Q" and len(node.args) == 1 and not node.keywords:
                return self.numeric_column(_q_arg(node, self))
            short = fname.split(".")[-1] if fname else None
            prefix = fname.rsplit(".", 1)[0] if fname and "." in fname else ""
            if short in _FUNCS and prefix in ("",) + _NUMPY_PREFIXES and len(node.args) == 1 \
                    and not node.keywords:
                inner = self.sql(node.args[0])
                if short == "square":
                    return f"pow({inner}, 2.0)"
                return f"{_FUNCS[short]}({inner})"
            if fname == "C":
                raise InputError(f"C() must be a whole factor, not part of an expression, in term {self.term!r}")
        raise self.fail(ast.unparse(node) if isinstance(node, ast.AST) else str(node))


def _func_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _func_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _q_arg(node: ast.Call, tr: _Translator) -> str:
    arg = node.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        raise tr.fail(ast.unparse(node))
    return arg.value


_ANSI = re.compile(r"\x1b\[[0-9;]*m|[\u29db\u29da]")
_BACKQUOTE = re.compile(r"`([^`]*)`")
_BQ_NAMES: dict[str, str] = {}


def _parse(expr: str, term: str) -> ast.Expression:
    """Parse a factor's Python expression; backquoted names become placeholders resolved by :func:`_unquote`."""
    def sub(m: re.Match) -> str:
        key = "__dq_bq_" + "".join(f"{ord(ch):x}_" for ch in m.group(1))
        _BQ_NAMES[key] = m.group(1)
        return key
    try:
        return ast.parse(_BACKQUOTE.sub(sub, expr), mode="eval")
    except SyntaxError:
        raise InputError(f"cannot parse formula term {term!r}") from None


def _unquote(name: str) -> str:
    return _BQ_NAMES.get(name, name)


@dataclass(frozen=True)
class _Factor:
    """One formulaic factor: numeric (``sql``) or categorical (``cat_column`` with its options)."""

    expr: str
    sql: str | None
    cat_column: str | None = None
    levels_given: tuple | None = None
    used: tuple[str, ...] = ()


def _factor(expr: str, lookup: bool, columns: Mapping[str, str], env: Mapping[str, Any]) -> _Factor:
    tr = _Translator(columns, env, expr)
    if lookup:  # a bare (possibly backquoted) name
        name = tr.column(expr)
        if is_numeric(columns[name]):
            return _Factor(expr, f"CAST({ident(name)} AS DOUBLE)", used=(name,))
        return _categorical(expr, name, None, columns, tr)
    node = _parse(expr, expr).body
    if isinstance(node, ast.Call) and _func_name(node.func) == "C":
        if not node.args:
            raise tr.fail(expr)
        arg = node.args[0]
        if isinstance(arg, ast.Name):
            col = tr.column(_unquote(arg.id))
        elif isinstance(arg, ast.Call) and _func_name(arg.func) == "Q" and len(arg.args) == 1:
            col = tr.column(_q_arg(arg, tr))
        else:
            raise InputError(f"C() needs a column as its first argument, got {ast.unparse(arg)!r} in term {expr!r}")
        if len(node.args) > 2:
            raise tr.fail(expr)
        if len(node.args) == 2:
            _check_contrast(node.args[1], tr)
        lev = None
        for kw in node.keywords:
            if kw.arg != "levels":
                raise tr.fail(f"{kw.arg}=")
            lev = _levels_value(kw.value, env, tr)
        return _categorical(expr, col, lev, columns, tr)
    if lookup is False and isinstance(node, ast.Name) and not is_numeric(columns.get(_unquote(node.id), "DOUBLE")):
        return _categorical(expr, tr.column(_unquote(node.id)), None, columns, tr)
    sql = tr.sql(node)
    return _Factor(expr, sql, used=tuple(tr.used))


def _categorical(expr, col, lev, columns, tr) -> _Factor:
    typ = columns[col].upper()
    base = typ.split("(")[0].strip()
    if not (base in ("VARCHAR", "BOOLEAN", "DECIMAL", "ENUM") or base in _INT_TYPES or base in _FLOAT_TYPES
            or typ.startswith("ENUM")):
        raise InputError(f"categorical variable {col!r} has type {columns[col]}, which duckquash cannot "
                         f"use as levels (use VARCHAR, BOOLEAN, an integer or a number)")
    return _Factor(expr, None, cat_column=col, levels_given=lev, used=tuple(tr.used))


def _check_contrast(node: ast.AST, tr: _Translator) -> None:
    if isinstance(node, ast.Name) and node.id in _CONTRASTS:
        return
    if isinstance(node, ast.Call) and _func_name(node.func) in _CONTRASTS:
        for kw in node.keywords:
            if kw.arg not in ("reference", "base") or not isinstance(kw.value, ast.Constant):
                raise tr.fail(ast.unparse(node))
        if node.args and not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)):
            raise tr.fail(ast.unparse(node))
        return
    raise tr.fail(ast.unparse(node))


def _levels_value(node: ast.AST, env: Mapping[str, Any], tr: _Translator) -> tuple:
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise InputError(f"levels={node.id} in term {tr.term!r}: pass it with levels={{{node.id!r}: [...]}}")
        value = env[node.id]
    else:
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise tr.fail(ast.unparse(node)) from None
    return tuple(plain_value(v) for v in np.asarray(list(value), dtype=object).tolist())


def plain_value(v: Any) -> Any:
    """A level as a plain Python value (numpy scalars unwrapped, DECIMAL as float), as the coding holds it."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Decimal):
        return float(v)
    return v


# ---------------------------------------------------------------- contrasts shims for formulaic

def _contrast_context() -> dict[str, Any]:
    """Names usable in C(x, ...): patsy spellings (``Treatment``, ``Treatment(reference=2)``, ``Sum``)."""
    from formulaic.transforms import contrasts as fc

    def shim(cls, **defaults):
        class Shim(cls):  # an instance usable bare (``Treatment``) or called (``Treatment(reference=2)``)
            def __call__(self, reference=None, base=None, **kw):
                ref = reference if reference is not None else base
                return cls(base=ref) if ref is not None and cls is fc.TreatmentContrasts else cls(**kw)
        Shim.__name__ = cls.__name__
        return Shim(**defaults)

    return {"Treatment": shim(fc.TreatmentContrasts), "Sum": shim(fc.SumContrasts),
            "Helmert": shim(fc.HelmertContrasts), "Diff": shim(fc.DiffContrasts),
            "Poly": shim(fc.PolyContrasts)}


# ---------------------------------------------------------------- the design

MAX_POWER = 10  # (a + b + ...)**k: interactions up to order k; formulaic's expansion hangs for large k


def _check_powers(formula: str) -> None:
    """Refuse interaction powers above MAX_POWER before formulaic expands them (``(x + y)**50`` took
    minutes); powers inside function calls (``I(x**50)``, ``np.log(x)**2``) are arithmetic and fine."""
    for side in formula.split("~"):
        try:
            tree = ast.parse(side.strip() or "0", mode="eval")
        except SyntaxError:
            continue  # formulaic reports its own syntax errors

        def visit(node: ast.AST) -> None:
            if isinstance(node, ast.Call):
                return
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant):
                k = node.right.value
                if isinstance(k, (int, float)) and k > MAX_POWER:
                    raise InputError(f"interaction power **{k:g} in {formula!r} is above {MAX_POWER}; (a + b + ...)**k "
                                     f"with k at least the number of terms is the same as k = that number")
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(tree)


def build_design(con: duckdb.DuckDBPyConnection, source_sql: str, formula: str, *,
                 levels: Mapping[str, Any] | None = None, columns: Mapping[str, str] | None = None) -> Design:
    """Turn ``formula`` into SQL expressions over ``source_sql`` (a FROM item).

    Parameters
    ----------
    con : connection holding the source.
    source_sql : a FROM item, e.g. ``duckquash.io.source.resolve(con, source).sql``.
    formula : ``"y ~ x1 + C(a, Sum) + x1:x2"`` (patsy/formulaic syntax); the left side is optional.
    levels : names usable in the formula, e.g. ``{"lnames": [0, 1, 2]}`` for ``C(a, levels=lnames)``.
    columns : the source's column types if already known (saves one DESCRIBE).

    Returns
    -------
    Design
    """
    if not isinstance(formula, str) or not formula.strip():
        raise InputError(f"formula must be a non-empty string, got {formula!r}")
    _check_powers(formula)

    env = dict(levels or {})
    if columns is None:
        columns = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {source_sql}").fetchall()}
    try:
        parsed = Formula(formula)
    except (FormulaicError, Exception) as e:  # formulaic raises plain exceptions for some syntax
        raise InputError(f"cannot parse formula {formula!r}: {_ANSI.sub('', str(e))}") from None
    parts = (parsed.lhs, parsed.rhs) if hasattr(parsed, "lhs") else (None, parsed)
    for part in parts:
        if part is not None and not isinstance(part, SimpleFormula):
            raise InputError(f"unsupported formula syntax in {formula!r}: multi-part formulas ('|', several "
                             f"responses) are not supported; use one response and one right-hand side")
    lhs_terms = list(parts[0]) if parts[0] is not None else []
    rhs_terms = list(parts[1])
    # translate every factor once
    factors: dict[str, _Factor] = {}
    for term in lhs_terms + rhs_terms:
        for fa in term.factors:
            method = getattr(fa.eval_method, "value", str(fa.eval_method))
            if method == "literal":
                if fa.expr not in ("1", "0"):
                    raise InputError(f"unsupported literal {fa.expr!r} in formula {formula!r}")
                continue
            if fa.expr not in factors:
                factors[fa.expr] = _factor(fa.expr, method == "lookup", columns, env)
    response = response_name = None
    if lhs_terms:
        if len(lhs_terms) != 1 or len(lhs_terms[0].factors) != 1:
            raise InputError(f"the left-hand side of {formula!r} must be one numeric variable or expression")
        f = factors[lhs_terms[0].factors[0].expr]
        if f.sql is None:
            raise InputError(f"the response {f.expr!r} must be numeric, not categorical")
        response, response_name = f.sql, f.expr
    variables = tuple(dict.fromkeys(v for f in factors.values() for v in f.used))
    complete = _complete_sql(variables, columns)
    cats = _find_levels(con, source_sql, factors, complete)
    wide = {k: len(v) for k, v in cats.items() if len(v) > MAX_DESIGN_LEVELS}
    if wide:  # refused before formulaic builds a column per level (2,000 levels: 9 s)
        raise InputError(f"categorical factor(s) {wide} have more levels than a design can hold "
                         f"({MAX_DESIGN_LEVELS}: one column per level, sums of products per pair of columns); "
                         "coarsen them, or squash first")
    spec, frame = _formulaic_spec(formula, factors, cats, columns, env, bool(lhs_terms))
    names, exprs, cells = _columns_sql(spec, factors, cats, formula)
    _self_check(frame, spec, names, exprs, cells)
    conds = [complete] + [f"isfinite({f.sql})" for f in factors.values()
                          if f.sql is not None and not f.sql.startswith("CAST(")]
    return Design(response=response, response_name=response_name, names=tuple(names), exprs=tuple(exprs),
                  variables=variables, where=" AND ".join(conds) if conds else "TRUE",
                  levels=tuple((k, tuple(v)) for k, v in cats.items()),
                  predictors=tuple(dict.fromkeys(v for t in rhs_terms for fa in t.factors
                                                 if fa.expr in factors for v in factors[fa.expr].used)),
                  cells=tuple(cells))


def _complete_sql(variables: tuple[str, ...], columns: Mapping[str, str]) -> str:
    conds = []
    for v in variables:
        conds.append(f"{ident(v)} IS NOT NULL")
        if columns[v].upper() in _FLOAT_TYPES:
            conds.append(f"NOT isnan({ident(v)})")
    return " AND ".join(conds) if conds else "TRUE"


def _find_levels(con, source_sql: str, factors: Mapping[str, _Factor], complete: str) -> dict[str, list]:
    """Distinct levels of every categorical factor's column, in ONE pass over complete rows."""
    cat_cols = list(dict.fromkeys(f.cat_column for f in factors.values() if f.cat_column))
    if not cat_cols:
        return {}
    aggs = [f"list(DISTINCT {ident(c)} ORDER BY {ident(c)}) FILTER (WHERE {complete})" for c in cat_cols]
    row = con.execute(f"SELECT {comma(aggs)} FROM {source_sql}").fetchall()[0]
    found = {c: [plain_value(v) for v in (vals or [])] for c, vals in zip(cat_cols, row)}
    for c, vals in found.items():
        if len(vals) > MAX_LEVELS:
            raise InputError(f"categorical variable {c!r} has {len(vals):,} levels (more than {MAX_LEVELS:,})")
    out: dict[str, list] = {}
    for f in factors.values():
        if not f.cat_column:
            continue
        seen = found[f.cat_column]
        if f.levels_given is not None:
            given = list(f.levels_given)
            missing = [v for v in given if not any(_same(v, s) for s in seen)]
            if missing:
                raise InputError(f"level(s) {missing} given for {f.expr!r} never occur in column "
                                 f"{f.cat_column!r} (it has {seen[:20]})")
            extra = [s for s in seen if not any(_same(v, s) for v in given)]
            if extra:
                raise InputError(f"column {f.cat_column!r} has value(s) {extra[:20]} not among the levels "
                                 f"given for {f.expr!r}: {given}")
            out[f.expr] = given
        else:
            out[f.expr] = seen
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return a == b and isinstance(a, str) == isinstance(b, str)
    except Exception:
        return False


def _formulaic_spec(formula, factors, cats, columns, env, has_lhs):
    """Build formulaic's model spec on a small synthetic frame holding every level."""
    import pandas as pd
    from formulaic import model_matrix

    col_levels: dict[str, list] = {}
    for f in factors.values():
        if f.cat_column:
            col_levels.setdefault(f.cat_column, [])
            for v in cats[f.expr]:
                if not any(_same(v, s) for s in col_levels[f.cat_column]):
                    col_levels[f.cat_column].append(v)
    variables = list(dict.fromkeys(v for f in factors.values() for v in f.used))
    n = max([3] + [len(v) for v in col_levels.values()])
    rng = np.random.default_rng(12345)
    data = {}
    for v in variables:
        if v in col_levels and col_levels[v]:
            vals = col_levels[v]
            cyc = [vals[i % len(vals)] for i in range(n)]
            if columns[v].upper().startswith("ENUM"):  # pandas reads ENUM as Categorical in enum order
                data[v] = pd.Series(pd.Categorical(cyc, categories=vals))
            else:
                data[v] = pd.Series(cyc, dtype=object if isinstance(vals[0], str) else None)
        else:
            data[v] = pd.Series(0.5 + 1.5 * rng.random(n))
    frame = pd.DataFrame(data)
    ctx = {**_contrast_context(), "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "log10": np.log10,
           "log2": np.log2, "log1p": np.log1p, "expm1": np.expm1, "abs": np.abs, "square": np.square,
           **env}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mm = model_matrix(formula, frame, context=ctx, na_action="ignore")
            if has_lhs:
                mm = mm.rhs
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"formulaic cannot build the design of {formula!r}: {e}") from None
    return mm.model_spec, (frame, mm)


def _columns_sql(spec, factors, cats, formula) -> tuple[list[str], list[str], list[tuple]]:
    """One SQL expression per column of formulaic's spec, in its order and with its names, and
    each column's factoring into categorical codings and numeric factors (``Design.cells``)."""
    names: list[str] = []
    exprs: list[str] = []
    cells: list[tuple] = []
    for struct in spec.structure:
        built: dict[str, str] = {}
        parts_of: dict[str, tuple] = {}
        for scoped in struct.scoped_terms:
            parts: list[list[tuple[str, str]]] = []
            for sf in scoped.factors:
                expr = sf.factor.expr
                f = factors.get(expr)
                if f is None:
                    raise InputError(f"unsupported factor {expr!r} in formula {formula!r}")
                if f.sql is not None:
                    parts.append([(expr, f.sql, None)])
                else:
                    parts.append(_coding(spec, f, cats[expr], sf.reduced))
            scale = float(getattr(scoped, "scale", 1))
            if not parts:
                built["Intercept"] = literal(scale)
                parts_of["Intercept"] = (scale, (), ())
                continue
            for rev in itertools.product(*reversed(parts)):
                prod = rev[::-1]
                name = ":".join(p[0] for p in prod)
                sql = " * ".join(p[1] for p in prod)
                if scale != 1:
                    sql = f"{literal(scale)} * {sql}"
                built[name] = sql if len(prod) == 1 else f"({sql})"
                parts_of[name] = (scale, tuple(p[2] for p in prod if p[2] is not None),
                                  tuple(p[1] for p in prod if p[2] is None))
        for col in struct.columns:
            if col not in built:
                raise InternalError(f"cannot map design column {col!r} of {formula!r} to SQL "
                                 f"(have {list(built)})")
            names.append(col)
            exprs.append(built[col])
            cells.append(parts_of[col])
    return names, exprs, cells


def _coding(spec, f: _Factor, levels: list, reduced: bool) -> list[tuple[str, str, tuple]]:
    """Columns of a categorical factor from formulaic's contrast coding matrix: (name, SQL,
    (cat_column, ((level, value), ...))) with the value of every level."""
    kind, state = spec.encoder_state[f.expr]
    cstate = state["contrasts"]
    contrasts, lv = cstate.contrasts, list(cstate.levels)
    matrix = contrasts.get_coding_matrix(lv, reduced_rank=reduced)
    fmt = contrasts.get_factor_format(lv, reduced_rank=reduced)
    col = ident(f.cat_column)
    out = []
    for j, field in enumerate(matrix.columns):
        values = matrix.iloc[:, j].to_numpy(dtype=float)
        name = fmt.format(name=f.expr, field=field)
        nz = [(lev, v) for lev, v in zip(lv, values) if v != 0.0]
        if len(nz) == 1 and nz[0][1] == 1.0:
            sql = f"CAST(({col} = {literal(plain_value(nz[0][0]))}) AS DOUBLE)"
        elif not nz:
            sql = "0.0"
        else:
            whens = " ".join(f"WHEN {literal(plain_value(lev))} THEN {literal(float(v))}" for lev, v in nz)
            sql = f"(CASE {col} {whens} ELSE 0.0 END)"
        out.append((name, sql, (f.cat_column, tuple((plain_value(lev), float(v)) for lev, v in zip(lv, values)))))
    return out


def _self_check(frame_mm, spec, names, exprs, cells=()) -> None:
    """DuckDB, evaluating our SQL on the synthetic frame, must reproduce formulaic's matrix; so must
    the factoring of each column into codings and numeric factors (``cells``)."""
    frame, mm = frame_mm
    if not names:
        return
    nums = list(dict.fromkeys(u for c in cells for u in c[2]))
    keys = list(dict.fromkeys(col for c in cells for col, _ in c[1]))
    con = duckdb.connect()
    try:
        con.register("__dq_frame", frame)
        got = np.array(con.execute(f"SELECT {comma(exprs)} FROM __dq_frame").fetchall(), dtype=float)
        if cells:
            sel = comma([f"CAST({u} AS DOUBLE)" for u in nums] + [ident(k) for k in keys] + ["0"])
            rows = con.execute(f"SELECT {sel} FROM __dq_frame").fetchall()
    finally:
        con.close()
    want = np.asarray(mm.to_numpy() if hasattr(mm, "to_numpy") else mm, dtype=float)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True):
        raise InternalError(f"SQL translation of design columns {names} disagrees with formulaic")
    if cells:
        fact = np.ones((len(rows), len(cells)))
        for j, (scale, cats, us) in enumerate(cells):
            for i, r in enumerate(rows):
                v = scale
                for col, mapping in cats:
                    v *= dict(mapping)[plain_value(r[len(nums) + keys.index(col)])]
                for u in us:
                    v *= r[nums.index(u)]
                fact[i, j] = v
        if not np.allclose(fact, want, rtol=1e-9, atol=1e-12, equal_nan=True):
            raise InternalError(f"the per-cell factoring of design columns {names} disagrees with formulaic")
