"""MIG017, MIG020: what copies a whole table (type changes, CLUSTER, VACUUM FULL, SET LOGGED,
batch mode's recreate)."""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.migrations.lint.rules.base import At, Hit, on_command, on_statement
from orchestrator.migrations.lint.sql import (
    BATCH_TEMP_PREFIX,
    AlterTableType,
    TypeKey,
    ast,
    names,
    relname,
    rewrites,
    type_key,
)


# -- MIG017: column types -----------------------------------------------------------------------


@on_command(AlterTableType.AT_AlterColumnType)
def rewriting_type_change(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG017. Changing a column's type rewrites the table (and rebuilds its indexes) under an
    ACCESS EXCLUSIVE lock, unless the new type only loosens a limit of the old one: a longer or
    unlimited varchar, varchar to text, a wider numeric. int to bigint, a shorter varchar, or
    another type family all rewrite."""
    column = cmd.name
    if not at.existing(table):  # a column the same migration added is in every row too
        return
    new = type_key(cmd.def_.typeName)
    old = at.schema.column_type(table, column)
    if old is not None and not rewrites(old, new) and _plain_using(cmd.def_.raw_default, column,
                                                                     new):
        return
    change = f"from {old} to {new}" if old is not None else f"to {new} (its old type is unknown)"
    fix = (f"add a new column of type {new}, write both from the code, backfill it in batches, "
           f"move the readers, then drop {column} in a later release")
    if old is not None and old.name in ("varchar", "text") and new.name == "varchar" \
            and new.modifiers and not old.array and not new.array:
        fix = (f"to limit {column} to {new.modifiers[0]} characters without a rewrite, keep its "
               f"type and add `CHECK (char_length({column}) <= {new.modifiers[0]}) NOT VALID`, "
               "validated in a later migration; or " + fix)
    yield Hit(
        "MIG017",
        f"changes {table}.{column} {change}: PostgreSQL rewrites the table and its indexes under "
        "an ACCESS EXCLUSIVE lock",
        fix,
    )


def _plain_using(using: object, column: str, new: TypeKey) -> bool:
    """No USING, or one that only casts the column to its new type (`USING code::text`, as
    `postgresql_using` is often written): PostgreSQL then decides as without it. Any other
    expression is computed for every row: a rewrite."""
    if isinstance(using, ast.TypeCast) and type_key(using.typeName) == new:
        using = using.arg
    return using is None or (isinstance(using, ast.ColumnRef)
                             and names(using.fields)[-1:] == (column,))


_REWRITE_FIX = ("do not rewrite a live table in a migration: rebuild it online with pg_repack "
                "(or pg_squeeze), or run it in a maintenance window")


@on_statement(ast.ClusterStmt, ast.VacuumStmt)
def table_rewrite(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG017 too. CLUSTER and VACUUM FULL copy the whole table into new files under an ACCESS
    EXCLUSIVE lock: no reads or writes until the copy and its indexes are done."""
    if isinstance(node, ast.ClusterStmt):
        what, tables = "CLUSTER", [node.relation] if node.relation else []
    elif any(option.defname == "full" for option in node.options or ()):
        what, tables = "VACUUM FULL", [r.relation for r in node.rels or ()]
    else:
        return
    targets = [relname(t) for t in tables if t is not None]
    if any(at.existing(t) for t in targets) or not targets:
        yield Hit("MIG017", f"rewrites {', '.join(targets) or 'every table'} ({what}): "
                  "PostgreSQL copies every row under an ACCESS EXCLUSIVE lock (no reads or "
                  "writes meanwhile)", _REWRITE_FIX)


@on_command(AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged,
            AlterTableType.AT_SetTableSpace)
def rewriting_table_command(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG017 too. SET LOGGED / UNLOGGED and SET TABLESPACE copy the whole table under an ACCESS
    EXCLUSIVE lock."""
    what = {AlterTableType.AT_SetLogged: "SET LOGGED", AlterTableType.AT_SetUnLogged:
            "SET UNLOGGED", AlterTableType.AT_SetTableSpace: "SET TABLESPACE"}[cmd.subtype]
    if at.existing(table):
        yield Hit("MIG017", f"rewrites {table} ({what}): PostgreSQL copies every row under an "
                  "ACCESS EXCLUSIVE lock (no reads or writes meanwhile)", _REWRITE_FIX)


# -- MIG020: batch mode recreating a table --------------------------------------------------------


@on_statement(ast.CreateStmt)
def batch_recreate(node: ast.CreateStmt, at: At) -> Iterator[Hit]:
    """MIG020. batch_alter_table with recreate="always" copies the table into a new one (CREATE,
    INSERT … SELECT, DROP, RENAME): on PostgreSQL the whole table is rewritten while it is
    locked, and its indexes are rebuilt, for changes PostgreSQL can make in place."""
    table = relname(node.relation)
    if table.startswith(BATCH_TEMP_PREFIX) and at.existing(table[len(BATCH_TEMP_PREFIX):]):
        yield batch_hit(table[len(BATCH_TEMP_PREFIX):])


def batch_hit(table: str) -> Hit:
    return Hit(
        "MIG020",
        f"recreates table {table} (batch_alter_table recreate=\"always\"): PostgreSQL copies "
        "every row into a new table under an ACCESS EXCLUSIVE lock",
        "use plain op.add_column/op.alter_column on PostgreSQL (batch mode's default "
        "recreate=\"auto\" does that), and keep recreate=\"always\" in a SQLite-only branch",
    )
