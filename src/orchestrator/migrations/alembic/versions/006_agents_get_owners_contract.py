"""Agents get owners (contract): every agent has an owner, enforced by the database.

Revision ID: 006
Revises: 005
Create Date: 2026-12-07

The second half of 005's expand/contract change (docs/migrations.md), applied once the code
that sets `agents.owner_id` on every new agent is deployed everywhere. Agents registered by the
previous code since 005 get their owner first, by 005's rule, in batches.

PostgreSQL, without holding a lock that blocks writes on agents for longer than a catalogue
change:
1. `VALIDATE CONSTRAINT` the foreign key 005 added NOT VALID (scans agents under a SHARE UPDATE
   EXCLUSIVE lock: reads and writes go on);
2. `ADD CONSTRAINT ck_agents_owner_id_not_null CHECK (owner_id IS NOT NULL) NOT VALID`, then
   `VALIDATE` it, each in its own transaction;
3. `SET NOT NULL`: PostgreSQL 12+ takes the valid check as proof and skips the scan; the check
   is then dropped.

SQLite cannot add NOT NULL to a column: the table is copied (batch mode), within the step's
transaction, keeping the tasks' agent ids that dropping the old copy would clear.

Fails, changing nothing, when an agent is left without an owner because there is no user at
all: create one (`orchestrator users create --admin ...`) and upgrade again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from orchestrator.migrations.recipes import recreate_sqlite_table, update_in_batches
from orchestrator.models import NAMING_CONVENTION

revision: str = "006"
down_revision: str | Sequence[str] | None = "005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# The checksum of the first release, which left its NOT VALID check behind when VALIDATE failed:
# it makes the same schema, so a database that applied it is not told the script changed.
valid_checksums = ("4ea24b1872adc0e1ffa6a04ee1e69d29310b9275b1fea0347ed00ccd3037206c",)

FK_NAME = "fk_agents_owner_id_users"
CHECK_NAME = "ck_agents_owner_id_not_null"
# 005's rule: the owner of the project of the agent's most recent task, else the first admin.
OWNER = (
    "owner_id = coalesce(("
    "SELECT projects.owner_id FROM tasks JOIN projects ON projects.id = tasks.project_id "
    "WHERE tasks.agent_id = agents.id ORDER BY tasks.updated_at DESC, tasks.id DESC LIMIT 1"
    "), (SELECT min(users.id) FROM users WHERE users.is_admin))"
)


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        update_in_batches("agents", OWNER, "owner_id IS NULL", label="006 agents.owner_id")
        _require_owners()
        recreate_sqlite_table(
            "agents", _not_null(True), [("tasks", "agent_id")], agents_table(owner=True)
        )
        return
    with op.get_context().autocommit_block():
        update_in_batches("agents", OWNER, "owner_id IS NULL", label="006 agents.owner_id")
        _require_owners()
        op.execute(f"ALTER TABLE agents VALIDATE CONSTRAINT {FK_NAME}")
        # A run interrupted after the ADD left the check behind: a rerun starts it afresh.
        op.execute(f"ALTER TABLE agents DROP CONSTRAINT IF EXISTS {CHECK_NAME}")
        op.execute(
            f"ALTER TABLE agents ADD CONSTRAINT {CHECK_NAME} CHECK (owner_id IS NOT NULL) "
            "NOT VALID"
        )
        try:
            op.execute(f"ALTER TABLE agents VALIDATE CONSTRAINT {CHECK_NAME}")
        except sa.exc.DBAPIError:
            # An agent without an owner came meanwhile (code that sets no owner still runs):
            # the check, committed, would refuse that code's next agent; take it away again.
            _drop_check()
            raise
    op.alter_column("agents", "owner_id", existing_type=sa.Integer(), nullable=False)
    op.drop_constraint(op.f(CHECK_NAME), "agents", type_="check")


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        recreate_sqlite_table(
            "agents",
            _not_null(False),
            [("tasks", "agent_id")],
            agents_table(owner=True, required=True),
        )
        return
    # The foreign key stays validated: 005's downgrade drops it with the column.
    op.alter_column("agents", "owner_id", existing_type=sa.Integer(), nullable=True)


def _not_null(required: bool):
    def change(batch) -> None:
        batch.alter_column("owner_id", existing_type=sa.Integer(), nullable=not required)

    return change


def _drop_check() -> None:
    try:
        op.execute(f"ALTER TABLE agents DROP CONSTRAINT IF EXISTS {CHECK_NAME}")
    except sa.exc.DBAPIError:
        pass  # the connection is gone too: the rerun drops it first


def _require_owners() -> None:
    if op.get_context().as_sql:
        # Offline SQL cannot look: the VALIDATE fails on an agent without an owner.
        return
    left = op.get_bind().execute(
        sa.text("SELECT count(*) FROM agents WHERE owner_id IS NULL")
    ).scalar()
    if left:
        raise RuntimeError(
            f"{left} agent(s) have no owner and there is no user to own them; create one "
            "(`orchestrator users create --admin --email ... --name ...`) and upgrade again"
        )


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
