"""The migrations build the schema the models describe, step by step, without losing rows."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from orchestrator.migrations import MigrationManager
from tests.schema import APP_TABLES, content_hash, execute, scalar, seed_rows, snapshot

TASK_INDEXES = {
    "ix_tasks_status": ("status",),
    "ix_tasks_priority_level": ("priority_level",),
    "ix_tasks_project_id": ("project_id",),
    "ix_tasks_agent_id": ("agent_id",),
    "ix_tasks_status_priority_created": ("status", "priority_level", "created_at"),
}


def test_fresh_database_to_head_has_tables_columns_and_indexes(manager: MigrationManager):
    assert manager.upgrade()[:3] == ["001", "002", "003"]
    schema = snapshot(manager.database_url)
    assert set(APP_TABLES) <= set(schema)
    task_columns = {c[0]: c for c in schema["tasks"]["columns"]}
    assert {"id", "project_id", "agent_id", "title", "status", "priority_level",
            "created_at", "updated_at"} <= set(task_columns)
    assert task_columns["priority_level"][2] is False  # NOT NULL
    indexes = {name: columns for name, columns, _ in schema["tasks"]["indexes"]}
    assert indexes == TASK_INDEXES
    assert ("uq_users_email", ("email",)) in schema["users"]["unique"] or any(
        name == "uq_users_email" for name, *_ in schema["users"]["indexes"]
    )
    assert {fk[2] for fk in schema["tasks"]["foreign_keys"]} == {"projects", "agents"}


@pytest.mark.parametrize("revision", ["001", "002", "003"])
def test_each_migration_goes_up_and_down(manager: MigrationManager, revision: str):
    previous = {"001": "base", "002": "001", "003": "002"}[revision]
    manager.upgrade(previous) if previous != "base" else None
    before = snapshot(manager.database_url)
    assert manager.upgrade(revision) == [revision]
    assert snapshot(manager.database_url) != before
    assert manager.downgrade(previous) == [revision]
    assert snapshot(manager.database_url) == before


def test_upgrade_adds_priority_3_to_existing_tasks(manager: MigrationManager):
    manager.upgrade("001")
    seed_rows(manager.database_url)
    manager.upgrade("002")
    assert scalar(manager.database_url, "SELECT count(*) FROM tasks WHERE priority_level = 3") == 2
    execute(manager.database_url, "INSERT INTO tasks (project_id, title) VALUES (1, 'Ship')")
    assert scalar(manager.database_url, "SELECT priority_level FROM tasks WHERE title = 'Ship'") == 3


@pytest.mark.parametrize("bad", [0, 6])
def test_priority_level_outside_1_to_5_is_rejected(manager: MigrationManager, bad: int):
    manager.upgrade()
    seed_rows(manager.database_url)
    with pytest.raises(IntegrityError):
        execute(manager.database_url, f"UPDATE tasks SET priority_level = {bad} WHERE id = 1")


def test_foreign_keys_are_enforced(manager: MigrationManager):
    manager.upgrade()
    with pytest.raises(IntegrityError):
        execute(manager.database_url, "INSERT INTO projects (owner_id, name) VALUES (42, 'orphan')")


def test_rows_survive_every_step_that_keeps_their_columns(manager: MigrationManager):
    manager.upgrade("001")
    seed_rows(manager.database_url)
    at_001 = content_hash(manager.database_url)
    manager.upgrade("003")
    execute(manager.database_url, "UPDATE tasks SET priority_level = 1 WHERE id = 2")
    at_head = content_hash(manager.database_url)
    manager.downgrade("002")
    assert content_hash(manager.database_url) == at_head  # dropping indexes keeps rows
    manager.downgrade("001")
    assert content_hash(manager.database_url) == at_001  # only priority_level is gone
    manager.upgrade()
    assert {t: n for t, (n, _) in content_hash(manager.database_url).items()} == {
        t: n for t, (n, _) in at_head.items()
    }


def test_round_trip_gives_an_identical_schema(manager: MigrationManager):
    manager.upgrade()
    at_head = snapshot(manager.database_url)
    manager.downgrade("base")
    assert snapshot(manager.database_url) == {}
    manager.upgrade()
    assert snapshot(manager.database_url) == at_head


def test_sqlite_adds_the_column_in_place(sqlite_url: str):
    """002 must not copy the table (a batch "move and copy" would rebuild the 1M-row file)."""
    manager = MigrationManager(sqlite_url)
    manager.upgrade("001")
    sql = manager.sql("002", start="001")
    assert "ALTER TABLE tasks ADD COLUMN priority_level" in sql
    assert "_alembic_tmp" not in sql and "INSERT INTO" not in sql
    downgrade_sql = manager.sql("001", start="002")
    assert "ALTER TABLE tasks DROP COLUMN priority_level" in downgrade_sql
