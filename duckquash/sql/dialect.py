"""Render duckquash's DuckDB SQL for another engine, in one place.

Queries are generated in DuckDB's dialect with a placeholder standing for the user's FROM item;
sqlglot parses that text once, the few DuckDB semantics another engine does not share are
rewritten on the syntax tree, and sqlglot writes it for the target (casts, quoting, function
names). The FROM item is put in afterwards, verbatim, so a user's table or subquery is never
rewritten.

DuckDB semantics made explicit for Spark SQL (the rest transpiles as is):

- ``CAST(x AS BIGINT)`` of a DOUBLE rounds half to even in DuckDB (and PostgreSQL); Spark
  truncates toward zero. Casts to an integer type of anything not integral by construction
  become ``CAST(rint(x) AS ...)`` (``rint``: Java's ``Math.rint``, half to even).
- ``sum`` of BIGINT is an exact ``HUGEINT`` in DuckDB; Spark's ``sum(BIGINT)`` is a BIGINT that
  overflows (wraps, or fails in ANSI mode), and ``sum(DECIMAL(38))`` runs on ``BigDecimal``.
  ``sum(CAST(x AS BIGINT))`` becomes two BIGINT sums, of each term's high bits (``t >> 30``)
  and low bits (``t & (2^30 - 1)``), recombined per group in ``DECIMAL(38,0)``:
  ``t = (t >> 30) * 2^30 + (t & (2^30 - 1))`` exactly in two's complement, every part is below
  2^30 in magnitude, so each part's sum is exact for up to 2^33 rows per region (partial
  aggregates merged across partitions included), and the result is the exact integer DuckDB gives.
- ``list[i]`` is 1-based in DuckDB, 0-based in Spark: it becomes ``element_at(list, CAST(i AS INT))``
  (1-based; it takes an INT index).
"""
from __future__ import annotations

from ..errors import InputError, InternalError

DIALECTS = ("duckdb", "postgres", "spark")
FROM_PLACEHOLDER = "__dq_from_item"
SPLIT_BITS = 30  # Spark's exact sums: high and low parts of each BIGINT term (see the module docstring)


def check_dialect(dialect: str) -> str:
    if dialect not in DIALECTS:
        raise InputError(f"dialect must be one of {list(DIALECTS)}, got {dialect!r}")
    return dialect


def render(sql: str, dialect: str, from_item: str) -> str:
    """``sql`` (DuckDB dialect, reading from :data:`FROM_PLACEHOLDER`) for ``dialect``, reading ``from_item``."""
    check_dialect(dialect)
    if FROM_PLACEHOLDER not in sql:
        raise InternalError("the query does not read the FROM placeholder")
    if dialect != "duckdb":
        import sqlglot  # only needed for other engines

        tree = sqlglot.parse_one(sql, read="duckdb")
        if dialect == "spark":
            tree = _for_spark(tree)
        sql = tree.sql(dialect=dialect)
    return sql.replace(FROM_PLACEHOLDER, from_item)


_INTEGER_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT")


def _is_integer_type(dtype) -> bool:
    return dtype.this.name in _INTEGER_TYPES


def _integral(node) -> bool:
    """Whether ``node`` is integral by construction (no rounding needed to cast it to an integer)."""
    from sqlglot import exp

    if isinstance(node, exp.Paren):
        return _integral(node.this)
    if isinstance(node, exp.Literal):
        return not node.is_string and node.this.lstrip("-").isdigit()
    if isinstance(node, exp.Null):
        return True
    if isinstance(node, exp.Count):
        return True
    if isinstance(node, exp.Cast):
        return _is_integer_type(node.to) or node.to.this.name == "BOOLEAN"
    if isinstance(node, exp.Predicate):  # comparisons, IS NULL, ...: booleans cast to 0/1
        return True
    if isinstance(node, exp.Case):
        branches = [i.args.get("true") for i in node.args.get("ifs", [])]
        return all(_integral(b) for b in branches + [node.args.get("default")] if b is not None)
    if isinstance(node, exp.Coalesce):
        return all(_integral(e) for e in [node.this] + list(node.expressions))
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul)):
        return _integral(node.left) and _integral(node.right)
    return False


def _for_spark(tree):
    """The DuckDB tree with the semantics Spark does not share made explicit (see the module docstring)."""
    from sqlglot import exp

    def exact_sum(node):
        if isinstance(node, exp.Sum) and isinstance(node.this, exp.Cast) and node.this.to.this.name == "BIGINT":
            term = node.this
            mask = exp.Literal.number((1 << SPLIT_BITS) - 1)
            hi = exp.Sum(this=exp.BitwiseRightShift(this=term.copy(), expression=exp.Literal.number(SPLIT_BITS)))
            lo = exp.Sum(this=exp.BitwiseAnd(this=term.copy(), expression=mask))
            dec = lambda e: exp.cast(e, exp.DataType.build("DECIMAL(38, 0)"))  # noqa: E731
            return exp.Paren(this=exp.Add(this=exp.Mul(this=dec(hi), expression=dec(exp.Literal.number(1 << SPLIT_BITS))),
                                          expression=dec(lo)))
        return node

    def rounded_cast(node):
        if isinstance(node, exp.Cast) and _is_integer_type(node.to) and not _integral(node.this):
            return exp.Cast(this=exp.Anonymous(this="rint", expressions=[node.this.copy()]), to=node.to.copy())
        return node

    tree = tree.transform(rounded_cast)  # before the INT casts of list indexes below, which are integral
    while (b := tree.find(exp.Bracket)) is not None:  # outermost first; the copies are found next
        if len(b.expressions) != 1:
            raise InternalError(f"cannot render a list slice for spark: {b.sql()}")
        index = exp.cast(b.expressions[0].copy(), exp.DataType.build("INT"))  # element_at takes an INT
        at = exp.Anonymous(this="element_at", expressions=[b.this.copy(), index])
        if b is tree:
            tree = at
        else:
            b.replace(at)
    return tree.transform(exact_sum)
