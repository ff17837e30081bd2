"""MIG018, MIG019: dropping or renaming what the running code still uses."""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.migrations.lint.rules.base import At, Hit, on_command, on_statement
from orchestrator.migrations.lint.sql import (
    BATCH_TEMP_PREFIX,
    AlterTableType,
    ObjectType,
    ast,
    names,
    relname,
)


# -- MIG018, MIG019: what the running code still uses ---------------------------------------------

_EXPAND_CONTRACT = ("first deploy code that no longer uses it; drop it in a later migration "
                    "(expand/contract), after copying the data if it is still needed")


@on_statement(ast.DropStmt)
def drop_table(node: ast.DropStmt, at: At) -> Iterator[Hit]:
    """MIG018. Dropping a table the previous release still reads or writes breaks every running
    instance at once, and destroys its data."""
    if node.removeType != ObjectType.OBJECT_TABLE:
        return
    for table in (names(o)[-1] for o in node.objects):
        if at.existing(table) and BATCH_TEMP_PREFIX + table not in at.new_tables:
            yield Hit("MIG018", f"drops table {table} and its rows while the running code "
                      "may still use it", _EXPAND_CONTRACT)


@on_command(AlterTableType.AT_DropColumn)
def drop_column(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG018. Dropping a column the previous release still selects or inserts breaks it, and
    destroys the column's data."""
    if at.existing_column(table, cmd.name):
        yield Hit("MIG018", f"drops column {table}.{cmd.name} and its data while the running "
                  "code may still use it", _EXPAND_CONTRACT)


@on_statement(ast.RenameStmt)
def rename(node: ast.RenameStmt, at: At) -> Iterator[Hit]:
    """MIG019. A rename is a drop for the code still running against the old name: every query
    that names it fails from the moment the migration commits."""
    if node.relation is None:
        return  # a type, function, schema...: not a table nor a column
    table = relname(node.relation)
    if node.renameType == ObjectType.OBJECT_TABLE and not table.startswith(BATCH_TEMP_PREFIX):
        what = f"table {table} to {node.newname}"
        fix = (f"create {node.newname}, write to both, copy the rows, move the readers, then "
               f"drop {table} in a later release (or keep a view named {table} meanwhile)")
    elif node.renameType == ObjectType.OBJECT_COLUMN:
        what = f"column {table}.{node.subname} to {node.newname}"
        fix = (f"add {node.newname}, write to both, backfill it, move the readers, then drop "
               f"{node.subname} in a later release")
    else:
        return
    if at.existing(table) and (node.renameType == ObjectType.OBJECT_TABLE
                               or at.existing_column(table, node.subname)):
        subject = table if node.renameType == ObjectType.OBJECT_TABLE else None
        yield Hit("MIG019", f"renames {what}: the running code still uses the old name", fix,
                  subject)
