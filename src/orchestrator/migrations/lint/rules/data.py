"""MIG021: changing rows (UPDATE, DELETE, TRUNCATE) in the migration's transaction."""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.migrations.lint.rules.base import AUTOCOMMIT, At, Hit, on_statement
from orchestrator.migrations.lint.sql import ast, names, relname


# -- MIG021: data changes -----------------------------------------------------------------------


def _whole_table(where: object) -> bool:
    """No condition, or only `col IS [NOT] NULL` tests: the backfill shape, every row."""
    if where is None:
        return True
    if isinstance(where, ast.NullTest):
        return True
    if isinstance(where, ast.BoolExpr) and where.boolop.name == "AND_EXPR":
        return all(_whole_table(arg) for arg in where.args)
    return False


def _conjuncts(where: object) -> list[object]:
    if isinstance(where, ast.BoolExpr) and where.boolop.name == "AND_EXPR":
        return [c for arg in where.args for c in _conjuncts(arg)]
    return [where]


def _value(node: object) -> bool:
    """A constant, a bound parameter, arithmetic on those, an array of those (possibly cast),
    or a scalar subquery: one value, or a list of them, given to the statement."""
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_ArrayExpr):
        return all(_value(e) for e in node.elements or ())
    if isinstance(node, ast.SubLink):
        return node.subLinkType.name == "EXPR_SUBLINK"
    if isinstance(node, ast.A_Expr) and node.kind.name == "AEXPR_OP":  # `:low + 5000`
        return all(_value(side) for side in (node.lexpr, node.rexpr) if side is not None)
    return isinstance(node, (ast.A_Const, ast.ParamRef))


def _column(node: object) -> str | None:
    return names(node.fields)[-1] if isinstance(node, ast.ColumnRef) and names(node.fields) \
        else None


def _bounded(where: object) -> bool:
    """Whether a condition picks rows the way a targeted fix or one batch does: `col = value` or
    `col IN (values)`, a key range with both ends (`id >= :low AND id < :high`, BETWEEN), or a
    subquery with a LIMIT. Anything else (IS NULL, a join, a comparison with another column or
    an open range) may select every row of the table."""
    lower: set[str] = set()
    upper: set[str] = set()
    for condition in _conjuncts(where):
        if isinstance(condition, ast.SubLink) and getattr(condition.subselect, "limitCount", None):
            return True
        if not isinstance(condition, ast.A_Expr):
            continue
        left, right = condition.lexpr, condition.rexpr
        kind, operator = condition.kind.name, names(condition.name)[-1]
        if _column(left) is None:  # `5 = id`: read it as `id = 5`
            left, right = right, left
            operator = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(operator, operator)
        column = _column(left)
        values = right if isinstance(right, tuple) else (right,)
        if column is None or not values or not all(_value(v) for v in values):
            continue
        if kind == "AEXPR_BETWEEN" or (
                kind in ("AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_IN") and operator == "="):
            return True
        if kind == "AEXPR_OP" and operator in (">", ">="):
            lower.add(column)
        elif kind == "AEXPR_OP" and operator in ("<", "<="):
            upper.add(column)
    return bool(lower & upper)


@on_statement(ast.UpdateStmt, ast.DeleteStmt)
def unbatched_dml(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG021. One UPDATE or DELETE over a whole table locks every row it touches until the
    migration commits (writers to those rows wait), writes a dead copy of each, and with the
    schema change in the same transaction keeps the table locked throughout."""
    table = relname(node.relation)
    if not at.existing(table) or (node.whereClause is not None and _bounded(node.whereClause)):
        return
    verb = "updates" if isinstance(node, ast.UpdateStmt) else "deletes"
    rows = (f"every row of {table}" if _whole_table(node.whereClause) else
            f"the rows of {table} matching a condition that is neither a key nor a key range "
            "(it may be every row)")
    yield Hit(
        "MIG021",
        f"{verb} {rows} in one statement: each row stays locked until the migration commits"
        + (", and so does the table it altered or locked" if table in at.locked else ""),
        "change it in batches of a few thousand rows by key (`WHERE id >= :low AND id < :high`), "
        f"each batch committed on its own inside {AUTOCOMMIT}, or run the backfill outside the "
        "migration",
    )


@on_statement(ast.TruncateStmt)
def truncate(node: ast.TruncateStmt, at: At) -> Iterator[Hit]:
    """MIG021 too. TRUNCATE takes an ACCESS EXCLUSIVE lock (it waits for every running query and
    blocks all that come after), and the rows the running code reads are gone at commit."""
    for table in (relname(r) for r in node.relations):
        if at.existing(table):
            yield Hit(
                "MIG021",
                f"empties {table} (TRUNCATE) under an ACCESS EXCLUSIVE lock: the running code "
                "waits for it, then finds no rows",
                f"if the rows must go while the code runs, delete them in batches inside "
                f"{AUTOCOMMIT}; if the table is retired, deploy code that no longer uses it, "
                "then drop it in a later migration",
            )
