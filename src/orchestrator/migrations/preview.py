"""What a downgrade destroys: the tables and columns its scripts drop, with the data they hold.

The drops are read from what the downgrade actually runs: each revision's `downgrade()` is
rendered offline as SQL (the linter's renderer, `lint/render.py`) and that SQL is read by
PostgreSQL's own parser, so a drop written with `op.drop_table`, `op.drop_column`, a batch
operation or raw `op.execute("DROP TABLE …")` is found alike. The live database then says how
many rows each dropped table holds and how many values (non-NULL) each dropped column holds.

A `downgrade()` that cannot be rendered offline is listed as unknown: what it drops cannot be
told, so the data it may destroy is assumed to be there (a backup is taken first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from orchestrator.migrations.lint.render import DOWNGRADE, render
from orchestrator.migrations.lint.sql import (
    AlterTableType,
    ObjectType,
    ParseError,
    ast,
    names,
    parse,
)

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class DroppedTable:
    revision: str
    table: str
    rows: int


@dataclass(frozen=True)
class DroppedColumn:
    revision: str
    table: str
    column: str
    # Rows where the column is not NULL: the values the drop destroys.
    values: int


@dataclass(frozen=True)
class UnknownDrops:
    """A revision whose downgrade could not be rendered: what it drops is not known."""

    revision: str
    reason: str


@dataclass(frozen=True)
class DowngradePreview:
    """What undoing some revisions destroys, newest revision first."""

    tables: tuple[DroppedTable, ...] = ()
    columns: tuple[DroppedColumn, ...] = ()
    unknown: tuple[UnknownDrops, ...] = field(default=())

    @property
    def loses_data(self) -> bool:
        """Whether data would be lost (or may be: a downgrade that could not be read)."""
        return (bool(self.unknown) or any(t.rows for t in self.tables)
                or any(c.values for c in self.columns))

    def lines(self) -> list[str]:
        """One line per dropped table, column or unreadable downgrade."""
        return (
            [f"table {t.table}: {t.rows:,} row{'s' * (t.rows != 1)} ({t.revision})"
             for t in self.tables]
            + [f"column {c.table}.{c.column}: {c.values:,} non-null "
               f"value{'s' * (c.values != 1)} ({c.revision})" for c in self.columns]
            + [f"unknown: the downgrade of {u.revision} cannot be read offline ({u.reason})"
               for u in self.unknown]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tables": [vars(t) for t in self.tables],
            "columns": [vars(c) for c in self.columns],
            "unknown": [vars(u) for u in self.unknown],
            "loses_data": self.loses_data,
        }


def planned_drops(
    script: ScriptDirectory, plan: Sequence[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], list[UnknownDrops]]:
    """(revision, table) and (revision, table, column) that the downgrades of `plan` (newest
    first, as they run) drop, and the revisions whose downgrade could not be rendered."""
    tables: list[tuple[str, str]] = []
    columns: list[tuple[str, str, str]] = []
    unknown: list[UnknownDrops] = []
    for rendered in render(script, plan, directions=(DOWNGRADE,)):
        if rendered.error is not None:
            unknown.append(UnknownDrops(rendered.revision, rendered.error))
        for statement in rendered.statements:
            try:
                nodes = parse(statement.sql)
            except ParseError as exc:
                unknown.append(UnknownDrops(rendered.revision, f"unparsable SQL: {exc}"))
                continue
            for node in nodes:
                if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
                    tables += [(rendered.revision, names(o)[-1]) for o in node.objects]
                elif isinstance(node, ast.AlterTableStmt):
                    columns += [(rendered.revision, node.relation.relname, cmd.name)
                                for cmd in node.cmds
                                if cmd.subtype == AlterTableType.AT_DropColumn]
    return tables, columns, unknown


def preview(connection: Connection, script: ScriptDirectory, plan: Sequence[str],
            existing: set[str]) -> DowngradePreview:
    """What undoing `plan` (newest first) destroys in the database of `connection`, whose
    tables are `existing`. A drop of something the database does not have destroys nothing; a
    column of a table a later step drops is counted with its table."""
    drop_tables, drop_columns, unknown = planned_drops(script, plan)
    quote = connection.dialect.identifier_preparer.quote
    tables: dict[str, DroppedTable] = {}
    for revision, table in drop_tables:
        if table in existing and table not in tables:
            rows = connection.exec_driver_sql(f"SELECT count(*) FROM {quote(table)}").scalar_one()
            tables[table] = DroppedTable(revision, table, rows)
    columns: dict[tuple[str, str], DroppedColumn] = {}
    inspector = inspect(connection) if drop_columns else None
    for revision, table, column in drop_columns:
        if table not in existing or table in tables or (table, column) in columns:
            continue
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            continue
        values = connection.exec_driver_sql(
            f"SELECT count({quote(column)}) FROM {quote(table)}").scalar_one()
        columns[(table, column)] = DroppedColumn(revision, table, column, values)
    return DowngradePreview(tuple(tables.values()), tuple(columns.values()), tuple(unknown))
