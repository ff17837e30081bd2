"""The rules that read a revision's PostgreSQL SQL, one small function per danger.

Each rule looks at one parsed statement (or one `ALTER TABLE` command) together with where the
migration stands when it runs (`At`): the schema the earlier revisions built, what this revision
created so far, and which tables its current transaction already holds a lock on that blocks
writers. A rule yields `Hit`s: the code, what is wrong with the names involved, and the fix.

Everything is judged for PostgreSQL 12 or later with live traffic: what matters is how long a
lock that blocks readers or writers is held, whether a table is rewritten, and whether the code
still running against the previous schema breaks.
"""

from __future__ import annotations

from collections.abc import Iterator

# Importing a family registers its rules; the walk runs them in this order (as listed in
# `lint.RULES`, by code).
from orchestrator.migrations.lint.rules import columns, indexes, rewriting, in_use, data  # noqa: F401, I001
from orchestrator.migrations.lint.rules.base import (
    AUTOCOMMIT,
    COMMAND_RULES,
    STATEMENT_RULES,
    At,
    Hit,
)
from orchestrator.migrations.lint.rules.rewriting import batch_hit
from orchestrator.migrations.lint.sql import AlterTableType, ConstrType, ObjectType, ast, relname

__all__ = ["AUTOCOMMIT", "At", "Hit", "advance", "batch_hit", "check"]


# -- the walk -------------------------------------------------------------------------------------

# LOCK TABLE modes from SHARE (5) up block writers.
_SHARE_LOCK = 5
# ALTER TABLE commands whose lock lets writers through (SHARE UPDATE EXCLUSIVE or weaker).
_LIGHT_COMMANDS = frozenset({
    AlterTableType.AT_ValidateConstraint, AlterTableType.AT_SetStatistics,
    AlterTableType.AT_ClusterOn, AlterTableType.AT_SetRelOptions,
    AlterTableType.AT_ResetRelOptions,
})


def check(node: ast.Node, at: At) -> Iterator[Hit]:
    """Every rule that applies to one parsed statement."""
    for kinds, rule in STATEMENT_RULES:
        if isinstance(node, kinds):
            yield from rule(node, at)
    if isinstance(node, ast.AlterTableStmt):
        table = relname(node.relation)
        for cmd in node.cmds:
            for kinds, command_rule in COMMAND_RULES:
                if cmd.subtype in kinds:
                    yield from command_rule(table, cmd, at)


def advance(node: ast.Node, at: At) -> None:
    """What the statement changes for the statements after it."""
    if isinstance(node, ast.CreateStmt):
        at.new_tables.add(relname(node.relation))
    elif isinstance(node, ast.AlterTableStmt):
        table = relname(node.relation)
        for cmd in node.cmds:
            if cmd.subtype == AlterTableType.AT_AddColumn:
                at.new_columns.add((table, cmd.def_.colname))
            if cmd.subtype not in _LIGHT_COMMANDS:
                at.locked.add(table)
            if (cmd.subtype == AlterTableType.AT_AddConstraint
                    and cmd.def_.contype == ConstrType.CONSTR_FOREIGN):
                at.locked.add(relname(cmd.def_.pktable))
    elif isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_TABLE:
        old = relname(node.relation)
        if old in at.new_tables:
            at.new_tables.add(node.newname)
        at.locked.update({old, node.newname})
    elif isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_COLUMN:
        table = relname(node.relation)
        if (table, node.subname) in at.new_columns:
            at.new_columns.add((table, node.newname))
    elif isinstance(node, ast.IndexStmt) and not node.concurrent:
        at.locked.add(relname(node.relation))
    elif isinstance(node, ast.ViewStmt):
        at.views.add(relname(node.view))
    elif isinstance(node, ast.LockStmt) and node.mode >= _SHARE_LOCK:
        at.locked.update(relname(r) for r in node.relations)
    at.schema.apply(node)
