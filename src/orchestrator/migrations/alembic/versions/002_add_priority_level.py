"""Add tasks.priority_level: 1 (most urgent) to 5, NOT NULL, default 3.

Revision ID: 002
Revises: 001
Create Date: 2026-11-25

Existing tasks read 3. Both databases add the column in place, without copying the table:
- SQLite: ALTER TABLE ... ADD COLUMN with the default and the range check as a column
  constraint (adding a table constraint later would need a full table copy in batch mode).
- PostgreSQL: ADD COLUMN with a constant default only touches the catalogue; the range check is
  added NOT VALID and then validated, which scans the table without blocking writes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "002"
down_revision: str | Sequence[str] | None = "001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK_NAME = "ck_tasks_priority_level_range"
CHECK_SQL = "priority_level BETWEEN 1 AND 5"


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE tasks ADD COLUMN priority_level INTEGER DEFAULT '3' NOT NULL "
            f"CONSTRAINT {CHECK_NAME} CHECK ({CHECK_SQL})"
        )
        return
    op.add_column(
        "tasks",
        sa.Column("priority_level", sa.Integer(), server_default="3", nullable=False),
    )
    op.execute(f"ALTER TABLE tasks ADD CONSTRAINT {CHECK_NAME} CHECK ({CHECK_SQL}) NOT VALID")
    op.execute(f"ALTER TABLE tasks VALIDATE CONSTRAINT {CHECK_NAME}")


def downgrade() -> None:
    # SQLite drops the column in place together with its own column constraint; PostgreSQL
    # drops the constraint with the column.
    op.drop_column("tasks", "priority_level")
