"""Agents get owners, and users a role (expand): add the columns, fill them in, nothing required.

Revision ID: 005
Revises: 004
Create Date: 2026-12-07

The first half of an expand/contract change (the worked example in docs/migrations.md); 006
makes `agents.owner_id` required once every agent has one. Between the two, the code of 004
keeps running: it never reads the new columns, and agents it registers get their owner from
006's second backfill.

- `users.is_admin`: NOT NULL with a constant default (PostgreSQL stores it in the catalogue, no
  rewrite). **The oldest user becomes an admin**, so that a deployment that has users keeps one
  who can manage the others; everyone else is a member.
- `api_tokens.last_used_at`: nullable, when a token was last used.
- `agents.owner_id`: nullable for now. On PostgreSQL its foreign key is added `NOT VALID` (no
  scan of agents while writes wait; 006 validates it) and its index is built `CONCURRENTLY`,
  outside the transaction, so agents stay writable during the build. SQLite copies the table
  to add the column with its named foreign key, and builds the index, in the step's transaction.
- Backfill: an agent's owner is the owner of the project of its most recent task, else the
  first admin. In batches of ids (`orchestrator.migrations.recipes`), each its own short
  transaction on PostgreSQL, with progress shown on a terminal.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orchestrator.migrations.recipes import recreate_sqlite_table, update_in_batches
from orchestrator.models import NAMING_CONVENTION

revision: str = "005"
down_revision: str | Sequence[str] | None = "004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# The checksum of the first release, which a rerun after an interruption could not complete:
# it makes the same schema, so a database that applied it is not told the script changed.
valid_checksums = ("7da52a502c0c3cd4f13ff16dee54e453c7d67c085de937cc498a10c6065df562",)

FK_NAME = "fk_agents_owner_id_users"
INDEX_NAME = "ix_agents_owner_id"
# The owner of the project of the agent's most recent task, else the first admin.
OWNER = (
    "owner_id = coalesce(("
    "SELECT projects.owner_id FROM tasks JOIN projects ON projects.id = tasks.project_id "
    "WHERE tasks.agent_id = agents.id ORDER BY tasks.updated_at DESC, tasks.id DESC LIMIT 1"
    "), (SELECT min(users.id) FROM users WHERE users.is_admin))"
)


def upgrade() -> None:
    # PostgreSQL commits what runs before the autocommit block when the block starts: a run
    # interrupted in the block (the index build, the backfill) left these done, and the rerun
    # that completes it must find them so (IF NOT EXISTS; SQLite's step is one transaction).
    again = op.get_context().dialect.name == "postgresql" or None
    op.add_column(
        "users",
        sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        if_not_exists=again,
    )
    op.execute(
        "UPDATE users SET is_admin = true WHERE id = "
        "(SELECT id FROM users ORDER BY created_at, id LIMIT 1)"
    )
    op.add_column(
        "api_tokens",
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        if_not_exists=again,
    )
    if op.get_context().dialect.name == "sqlite":
        # A table copy: SQLite can add a column with a foreign key in place, but then reports
        # the key without its name; the copy is what 006 makes too.
        recreate_sqlite_table(
            "agents", _add_owner, [("tasks", "agent_id")], agents_table(owner=False)
        )
        op.create_index(INDEX_NAME, "agents", ["owner_id"])
        update_in_batches("agents", OWNER, "owner_id IS NULL", label="005 agents.owner_id")
        return
    op.add_column(
        "agents", sa.Column("owner_id", sa.Integer(), nullable=True), if_not_exists=True
    )
    # PostgreSQL has no ADD CONSTRAINT IF NOT EXISTS; dropping it is a catalogue change too.
    op.execute(f"ALTER TABLE agents DROP CONSTRAINT IF EXISTS {FK_NAME}")
    op.execute(
        f"ALTER TABLE agents ADD CONSTRAINT {FK_NAME} FOREIGN KEY (owner_id) "
        "REFERENCES users (id) ON DELETE CASCADE NOT VALID"
    )
    with op.get_context().autocommit_block():
        _drop_if_invalid(INDEX_NAME)
        op.create_index(
            INDEX_NAME, "agents", ["owner_id"], postgresql_concurrently=True, if_not_exists=True
        )
        update_in_batches("agents", OWNER, "owner_id IS NULL", label="005 agents.owner_id")


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.drop_index(INDEX_NAME, table_name="agents")
        # SQLite drops a column with a foreign key only by copying the table.
        recreate_sqlite_table(
            "agents",
            lambda batch: batch.drop_column("owner_id"),
            [("tasks", "agent_id")],
            agents_table(owner=True),
        )
    else:
        with op.get_context().autocommit_block():
            op.drop_index(
                INDEX_NAME, table_name="agents", postgresql_concurrently=True, if_exists=True
            )
        op.drop_column("agents", "owner_id")
    op.drop_column("api_tokens", "last_used_at")
    op.drop_column("users", "is_admin")


def _add_owner(batch) -> None:
    batch.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
    batch.create_foreign_key(FK_NAME, "users", ["owner_id"], ["id"], ondelete="CASCADE")


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
        op.drop_index(name, table_name="agents", postgresql_concurrently=True)


def agents_table(*, owner: bool, required: bool = False) -> sa.Table:
    """`agents` as 004 left it, or with `owner_id` (nullable, as 005 leaves it, or required):
    what SQLite's offline table copy starts from."""
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    sa.Table("users", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    columns = [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="idle", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True),
                  server_default=sa.func.current_timestamp(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True),
                  server_default=sa.func.current_timestamp(), nullable=False),
        sa.CheckConstraint("status IN ('idle', 'busy', 'offline')", name="status_valid"),
    ]
    if owner:
        columns.append(sa.Column(
            "owner_id", sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name=FK_NAME), nullable=not required,
        ))
    return sa.Table("agents", metadata, *columns)
