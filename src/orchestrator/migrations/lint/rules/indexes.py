"""MIG013-MIG016: building and dropping indexes, adding and validating constraints."""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.migrations.lint.rules.base import AUTOCOMMIT, At, Hit, on_command, on_statement
from orchestrator.migrations.lint.sql import (
    AlterTableType,
    ConstrType,
    ObjectType,
    ast,
    constraints,
    names,
    relname,
)


# -- MIG013, MIG014: indexes ----------------------------------------------------------------------


def _concurrently(node: ast.Node) -> bool:
    if isinstance(node, ast.ReindexStmt):
        return any(p.defname == "concurrently" for p in node.params or ())
    return bool(node.concurrent)


def _index_table(node: ast.Node, at: At) -> tuple[str, str] | None:
    """(what, table) of an index statement; None for what this revision created."""
    if isinstance(node, ast.IndexStmt):
        table = relname(node.relation)
        return (f"builds index {node.idxname or '(unnamed)'} on {table}", table) \
            if at.existing(table) else None
    if isinstance(node, ast.ReindexStmt):
        target = node.relation.relname if node.relation else node.name
        return f"rebuilds {target}", target
    if node.removeType != ObjectType.OBJECT_INDEX:
        return None
    for index in (names(o)[-1] for o in node.objects):
        table = at.schema.indexes.get(index)
        if table is None or at.existing(table):
            return f"drops index {index}" + (f" on {table}" if table else ""), table or index
    return None


@on_statement(ast.IndexStmt, ast.DropStmt, ast.ReindexStmt)
def index_not_concurrent(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG013. CREATE INDEX blocks every write to the table until the whole index is built (a
    SHARE lock); DROP INDEX and REINDEX take locks that block reads too. CONCURRENTLY does the
    same work without blocking writers."""
    found = _index_table(node, at)
    if found is None or _concurrently(node):
        return
    what, _table = found
    statement = {ast.IndexStmt: "CREATE INDEX", ast.DropStmt: "DROP INDEX",
                 ast.ReindexStmt: "REINDEX"}[type(node)]
    if isinstance(node, ast.IndexStmt) and node.unique:
        statement = "CREATE UNIQUE INDEX"
    blocked = "writes to the table" if isinstance(node, ast.IndexStmt) else \
        "reads and writes of the table"
    yield Hit(
        "MIG013",
        f"{what} without CONCURRENTLY: PostgreSQL blocks {blocked} until it is done",
        f"use `{statement} CONCURRENTLY` (`postgresql_concurrently=True`) inside {AUTOCOMMIT}",
    )


@on_statement(ast.IndexStmt, ast.DropStmt, ast.ReindexStmt)
def concurrently_in_transaction(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG014. CONCURRENTLY cannot run inside a transaction block, and every revision runs in
    one: PostgreSQL refuses the statement and the migration fails, unless it is inside
    `autocommit_block()`."""
    if isinstance(node, ast.DropStmt) and node.removeType != ObjectType.OBJECT_INDEX:
        return
    if _concurrently(node) and at.statement.in_transaction:
        yield Hit(
            "MIG014",
            "runs CONCURRENTLY inside the migration's transaction: PostgreSQL refuses it "
            "(cannot run inside a transaction block)",
            f"move it into {AUTOCOMMIT}, which commits the transaction before and starts a new "
            "one after",
        )


# -- MIG015, MIG016: constraints ------------------------------------------------------------------


@on_command(AlterTableType.AT_AddConstraint, AlterTableType.AT_AddColumn)
def unique_constraint(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG015. ADD CONSTRAINT … UNIQUE (or PRIMARY KEY), or a new column declared UNIQUE,
    builds its index while holding an ACCESS EXCLUSIVE lock: no reads or writes for the whole
    build. Built first with CREATE UNIQUE INDEX CONCURRENTLY, the index can be attached as the
    constraint instantly."""
    kinds = {ConstrType.CONSTR_UNIQUE: "UNIQUE", ConstrType.CONSTR_PRIMARY: "PRIMARY KEY"}
    if (cmd.subtype == AlterTableType.AT_AddConstraint and at.existing(table)
            and cmd.def_.contype == ConstrType.CONSTR_EXCLUSION):
        yield _exclusion_hit(table, cmd.def_)
        return
    if cmd.subtype == AlterTableType.AT_AddColumn:
        found = [(c, (cmd.def_.colname,)) for c in constraints(cmd.def_, *kinds)]
    else:
        found = [(cmd.def_, names(cmd.def_.keys))]
    for constraint, keys in found:
        if constraint.contype not in kinds or constraint.indexname or not at.existing(table):
            continue
        columns = ", ".join(keys)
        name = constraint.conname or (
            f"{table}_pkey" if constraint.contype == ConstrType.CONSTR_PRIMARY
            else f"{table}_{'_'.join(keys)}_key")
        yield Hit(
            "MIG015",
            f"adds {kinds[constraint.contype]} constraint {name} to {table}: PostgreSQL builds "
            "its index under an ACCESS EXCLUSIVE lock (no reads or writes meanwhile)",
            f"build the index first, `CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} "
            f"({columns})` inside {AUTOCOMMIT}, then `ALTER TABLE {table} ADD CONSTRAINT "
            f"{name} {kinds[constraint.contype]} USING INDEX {name}`",
        )


def _exclusion_hit(table: str, constraint: ast.Constraint) -> Hit:
    """An exclusion constraint has no concurrent build and no USING INDEX form."""
    name = constraint.conname or f"{table}_excl"
    return Hit(
        "MIG015",
        f"adds EXCLUDE constraint {name} to {table}: PostgreSQL builds its index and checks "
        "every row under an ACCESS EXCLUSIVE lock, and offers no CONCURRENTLY form for it",
        "if every operator is `=`, use a unique index built `CONCURRENTLY` inside "
        f"{AUTOCOMMIT} instead; otherwise add the constraint to a new table and move the rows "
        "to it in batches, or run it in a maintenance window with a short lock_timeout",
    )


def _validated_later(kind: str, name: str, table: str) -> str:
    return (f"add it `NOT VALID` (`postgresql_not_valid=True`; existing rows are not checked, "
            f"new ones are), and `ALTER TABLE {table} VALIDATE CONSTRAINT {name}` in a later "
            f"migration: validating takes a lock that lets reads and writes go on")


@on_command(AlterTableType.AT_AddConstraint, AlterTableType.AT_AddColumn)
def constraint_not_valid(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG016. A FOREIGN KEY or CHECK constraint added to an existing table is checked against
    every row while a lock that blocks writes is held (ACCESS EXCLUSIVE for a CHECK, SHARE ROW
    EXCLUSIVE on both tables for a foreign key). NOT VALID skips that check; VALIDATE
    CONSTRAINT later does it under a lock that lets traffic through."""
    if not at.existing(table):
        return
    if cmd.subtype == AlterTableType.AT_AddColumn:
        found = [(c, f"{table}.{cmd.def_.colname}", f"{table}_{cmd.def_.colname}")
                 for c in constraints(cmd.def_, ConstrType.CONSTR_FOREIGN,
                                      ConstrType.CONSTR_CHECK)]
    else:
        found = [(cmd.def_, table, "_".join((table, *names(cmd.def_.fk_attrs))))] \
            if cmd.def_.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK) else []
    for constraint, where, stem in found:
        if constraint.skip_validation:
            continue
        foreign = constraint.contype == ConstrType.CONSTR_FOREIGN
        kind = "FOREIGN KEY" if foreign else "CHECK"
        # PostgreSQL's own name for an unnamed constraint.
        name = constraint.conname or f"{stem}_{'fkey' if foreign else 'check'}"
        columns = names(constraint.fk_attrs)
        if where != table:
            first = "add the column first, then the constraint separately; "
        elif foreign and columns and all((table, c) in at.new_columns for c in columns):
            first = (f"drop the `sa.ForeignKey` from the new column {', '.join(columns)} (Alembic "
                     "adds it as a separate, validated constraint) and add the key with "
                     "`op.create_foreign_key(...)`; ")
        else:
            first = ""
        yield Hit(
            "MIG016",
            f"adds {kind} {name} on {where} without NOT VALID: PostgreSQL checks every existing "
            "row while holding a lock that blocks writes",
            first + _validated_later(kind, name, table),
        )


@on_command(AlterTableType.AT_ValidateConstraint)
def validate_under_lock(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG016 too. VALIDATE CONSTRAINT only lets traffic through when nothing earlier in the same
    transaction locked the table: after an ALTER TABLE in the same migration, the whole scan runs
    under that statement's ACCESS EXCLUSIVE lock, as if NOT VALID had not been used."""
    if at.existing(table) and table in at.locked:
        yield Hit(
            "MIG016",
            f"validates {cmd.name} in the same transaction that already locked {table}: the "
            "scan of every row runs under that lock (no reads or writes meanwhile)",
            f"move `ALTER TABLE {table} VALIDATE CONSTRAINT {cmd.name}` to a later migration",
        )
