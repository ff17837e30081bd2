"""Add the indexes that task queries use.

Revision ID: 003
Revises: 002
Create Date: 2026-11-25

Tasks are listed by status, by priority, by project and by agent, and agents claim "the next
pending task by priority" (WHERE status = 'pending' ORDER BY priority_level, created_at), which
the composite index serves without a sort.

On PostgreSQL the indexes are built CONCURRENTLY, outside a transaction, so inserts and updates
to `tasks` continue during the build. A concurrent build that was interrupted leaves an INVALID
index behind; it is dropped and built again here, so re-running the migration repairs it.
SQLite builds them with a plain CREATE INDEX (it has no concurrent build, and locks the file
either way).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "003"
down_revision: str | Sequence[str] | None = "002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES: dict[str, list[str]] = {
    "ix_tasks_status": ["status"],
    "ix_tasks_priority_level": ["priority_level"],
    "ix_tasks_project_id": ["project_id"],
    "ix_tasks_agent_id": ["agent_id"],
    "ix_tasks_status_priority_created": ["status", "priority_level", "created_at"],
}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        for name, columns in INDEXES.items():
            op.create_index(name, "tasks", columns)
        return
    with op.get_context().autocommit_block():
        for name, columns in INDEXES.items():
            _drop_if_invalid(name)
            op.create_index(
                name, "tasks", columns, postgresql_concurrently=True, if_not_exists=True
            )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        for name in reversed(INDEXES):
            op.drop_index(name, table_name="tasks")
        return
    with op.get_context().autocommit_block():
        for name in reversed(INDEXES):
            op.drop_index(name, table_name="tasks", postgresql_concurrently=True, if_exists=True)


def _drop_if_invalid(name: str) -> None:
    if op.get_context().as_sql:
        # Offline SQL cannot look; the operator runs the script against a known state.
        return
    invalid = op.get_bind().execute(
        sa.text(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND NOT i.indisvalid"
        ),
        {"name": name},
    )
    if invalid.first() is not None:
        op.drop_index(name, table_name="tasks", postgresql_concurrently=True)
