"""What every SQL rule works with: the `Hit` it yields, where the migration stands (`At`), and
the two registries (`on_statement`, `on_command`) a rule joins when its module is imported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from orchestrator.migrations.lint.render import Statement
from orchestrator.migrations.lint.sql import AlterTableType, Schema, ast

AUTOCOMMIT = "`with op.get_context().autocommit_block():`"


@dataclass(frozen=True)
class Hit:
    code: str
    message: str
    fix: str
    # The table a later statement of the revision can make safe (a view under a renamed name).
    subject: str | None = None


@dataclass
class At:
    """Where the migration stands when a statement runs."""

    statement: Statement
    # The schema before this statement (earlier revisions and this one's earlier statements).
    schema: Schema
    # Tables and (table, column)s this revision created before this statement.
    new_tables: set[str] = field(default_factory=set)
    new_columns: set[tuple[str, str]] = field(default_factory=set)
    # Tables on which the current transaction already holds a lock that blocks writers: it is
    # held until COMMIT, so anything slow later in the same transaction blocks them all along.
    # (Emptied when a transaction ends, and before each statement run outside one.)
    locked: set[str] = field(default_factory=set)
    # Views this revision created (a view under a renamed table's old name keeps old code working).
    views: set[str] = field(default_factory=set)

    def existing(self, table: str) -> bool:
        """The table existed before this revision (one it does not create is assumed to)."""
        return table not in self.new_tables

    def existing_column(self, table: str, column: str) -> bool:
        return self.existing(table) and (table, column) not in self.new_columns


StatementRule = Callable[[ast.Node, At], Iterator[Hit]]
CommandRule = Callable[[str, ast.AlterTableCmd, At], Iterator[Hit]]
STATEMENT_RULES: list[tuple[tuple[type, ...], StatementRule]] = []
COMMAND_RULES: list[tuple[tuple[AlterTableType, ...], CommandRule]] = []


def on_statement(*kinds: type) -> Callable[[StatementRule], StatementRule]:
    def register(rule: StatementRule) -> StatementRule:
        STATEMENT_RULES.append((kinds, rule))
        return rule
    return register


def on_command(*kinds: AlterTableType) -> Callable[[CommandRule], CommandRule]:
    def register(rule: CommandRule) -> CommandRule:
        COMMAND_RULES.append((kinds, rule))
        return rule
    return register
