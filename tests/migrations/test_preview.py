"""A downgrade says what it destroys before it runs (tables with their rows, columns with their
non-null values, read from the SQL its scripts run), and when that is any data it takes a
backup first in every environment, development included, and says where."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.migrations import MigrationManager
from orchestrator.migrations.preview import DowngradePreview, DroppedColumn, DroppedTable
from tests.fixtures import add_revision, command_runner, copy_scripts
from tests.schema import execute, scalar, seed_rows


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def development(db_url: str, backups: Path):
    """A database at 004 with rows, managed as development does: no automatic backup (at 004,
    so that what each revision drops is what these tests name; 005 and 006 add to it)."""
    with MigrationManager(db_url, backup_dir=backups, backup_before_migrate=False) as manager:
        manager.upgrade("004")
        seed_rows(db_url)
        yield manager


def add_tokens(url: str, count: int) -> None:
    for number in range(count):
        execute(url, "INSERT INTO api_tokens (user_id, name, token_hash, prefix) "
                     f"VALUES (1, 'token {number}', '{number:064d}', 'orch_{number}')")


def test_downgrading_004_lists_the_tokens_table_with_its_rows_and_backs_it_up_first(
    development, db_url, backups
):
    add_tokens(db_url, 3)
    plan = development.plan_downgrade("003")
    assert development.preview_downgrade(plan) == DowngradePreview(
        tables=(DroppedTable("004", "api_tokens", 3),))
    assert development.downgrade("003") == ["004"]
    assert development.last_preview.loses_data
    backup = development.last_backup
    assert backup is not None and backup.path.exists() and backup.path.parent == backups
    assert backup.revision == "004" and backup.reason == "before-downgrade"
    # The tokens are in the backup, and only there.
    with MigrationManager(db_url, backup_dir=backups) as manager:
        manager.restore(backup.path)
    assert scalar(db_url, "SELECT count(*) FROM api_tokens") == 3


def test_downgrading_002_lists_priority_level_with_its_non_null_values(development, db_url):
    # The two seeded tasks took the default; a third has its own value.
    execute(db_url, "INSERT INTO tasks (project_id, title, priority_level) VALUES (1, 'x', 1)")
    preview = development.preview_downgrade(development.plan_downgrade("001"))
    assert preview.tables == (DroppedTable("004", "api_tokens", 0),)
    assert preview.columns == (DroppedColumn("002", "tasks", "priority_level", 3),)
    development.downgrade("001")
    assert development.last_backup is not None and development.last_backup.path.exists()
    assert development.last_backup.revision == "004"


def test_a_downgrade_that_destroys_no_data_takes_no_backup_in_development(development, backups):
    assert development.downgrade("003") == ["004"]
    assert development.last_preview == DowngradePreview(
        tables=(DroppedTable("004", "api_tokens", 0),))
    assert not development.last_preview.loses_data
    assert development.last_backup is None and not backups.exists()


def test_a_column_of_a_dropped_table_is_counted_with_its_table(development):
    preview = development.preview_downgrade(development.plan_downgrade("base"))
    assert preview.columns == ()
    assert {(t.table, t.rows) for t in preview.tables} == {
        ("api_tokens", 0), ("tasks", 2), ("agents", 1), ("projects", 1), ("users", 1)}


def test_null_values_are_not_counted_as_destroyed(sqlite_url, tmp_path, backups):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, 'op.add_column("agents", sa.Column("note", sa.Text(), nullable=True))',
                 'op.drop_column("agents", "note")')
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_dir=backups) as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        execute(sqlite_url, "INSERT INTO agents (name) VALUES ('no note')")
        preview = manager.preview_downgrade(manager.plan_downgrade("-1"))
        assert preview.columns == (DroppedColumn("005", "agents", "note", 0),)
        assert not preview.loses_data
        execute(sqlite_url, "UPDATE agents SET note = 'kept' WHERE name = 'worker-1'")
        preview = manager.preview_downgrade(manager.plan_downgrade("-1"))
        assert preview.columns == (DroppedColumn("005", "agents", "note", 1),)


def test_a_drop_written_as_raw_sql_is_found_too(sqlite_url, tmp_path, backups):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, 'op.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")',
                 'op.execute("DROP TABLE notes")')
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_dir=backups) as manager:
        manager.upgrade()
        execute(sqlite_url, "INSERT INTO notes (body) VALUES ('a'), ('b')")
        assert manager.downgrade("-1") == ["005"]
        assert manager.last_preview.tables == (DroppedTable("005", "notes", 2),)
        assert manager.last_backup is not None
        kept = sqlite3.connect(manager.last_backup.path)
        assert kept.execute("SELECT count(*) FROM notes").fetchone() == (2,)
        kept.close()


def test_a_downgrade_that_cannot_be_read_offline_is_taken_as_destroying_data(
    sqlite_url, tmp_path, backups
):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, "pass", 'rows = op.get_bind().execute(sa.text("SELECT 1")).one()')
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_dir=backups) as manager:
        manager.upgrade()
        preview = manager.preview_downgrade(manager.plan_downgrade("-1"))
        assert preview.loses_data and [u.revision for u in preview.unknown] == ["005"]
        assert preview.lines() == [
            f"unknown: the downgrade of 005 cannot be read offline ({preview.unknown[0].reason})"]
        manager.downgrade("-1")
        assert manager.last_backup is not None


def test_the_backup_a_data_loss_needs_cannot_be_skipped(development, db_url, backups):
    add_tokens(db_url, 1)
    backups.parent.mkdir(exist_ok=True)
    backups.write_text("a file where the backup folder should be")
    from orchestrator.migrations.backup import BackupError

    with pytest.raises(BackupError, match=r"no downgrade that destroys data without a backup "
                                          r"taken before it; make room for it, or set "
                                          r"BACKUP_DIR to a writable folder\)$"):
        development.downgrade("003")
    assert development.get_current_revision() == "004"
    assert scalar(db_url, "SELECT count(*) FROM api_tokens") == 1


# -- the command ----------------------------------------------------------------------------


def test_the_command_lists_what_it_destroys_and_where_the_backup_went(
    development, db_url, backups, run_here
):
    add_tokens(db_url, 2)
    env = {"DATABASE_URL": db_url, "BACKUP_DIR": str(backups)}
    result = run_here("db", "downgrade", "001", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[4:8] == [
        "It destroys:",
        "  table api_tokens: 2 rows (004)",
        "  column tasks.priority_level: 2 non-null values (002)",
        "A backup is taken first (its path is printed when it is done).",
    ]
    [backup] = [p for p in backups.iterdir() if p.suffix in (".sqlite", ".dump")]
    assert f"Backed up first, at 004: {backup}" in lines
    assert scalar(db_url, "SELECT version_num FROM alembic_version") == "001"


def test_dry_run_lists_and_changes_nothing(development, db_url, backups, run_here):
    add_tokens(db_url, 2)
    env = {"DATABASE_URL": db_url, "BACKUP_DIR": str(backups)}
    result = run_here("db", "downgrade", "003", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "  table api_tokens: 2 rows (004)" in result.stdout.splitlines()
    assert result.stdout.endswith("Dry run: nothing was changed.\n")
    assert scalar(db_url, "SELECT count(*) FROM api_tokens") == 2 and not backups.exists()


def test_json_has_the_preview_and_the_backup(development, db_url, backups, run_here):
    add_tokens(db_url, 2)
    env = {"DATABASE_URL": db_url, "BACKUP_DIR": str(backups)}
    dry = json.loads(run_here("db", "downgrade", "003", "--dry-run", "--json", env=env).stdout)
    assert dry["dry_run"] and dry["undone"] == [] and dry["backup"] is None
    result = run_here("db", "downgrade", "003", "--json", env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # the human lines went to stderr
    expected = {"tables": [{"revision": "004", "table": "api_tokens", "rows": 2}],
                "columns": [], "unknown": [], "loses_data": True}
    assert dry["destroys"] == document["destroys"] == expected
    assert document["from"] == "004" and document["to"] == "003"
    assert document["undoes"][0]["revision"] == "004" and document["undone"] == ["004"]
    assert Path(document["backup"]["path"]).exists()
    assert "  table api_tokens: 2 rows (004)" in result.stderr
    nothing = json.loads(run_here("db", "downgrade", "003", "--json", env=env).stdout)
    assert nothing["undoes"] == [] and nothing["destroys"] is None and nothing["to"] == "003"


def test_sql_cannot_be_combined_with_dry_run(sqlite_url, run_here):
    result = run_here("db", "downgrade", "003", "--sql", "--dry-run",
                      env={"DATABASE_URL": sqlite_url})
    assert result.returncode == 2 and "cannot be combined with --dry-run" in result.stderr


def test_production_asks_after_showing_what_is_destroyed(development, db_url, backups):
    add_tokens(db_url, 1)
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "db", "downgrade", "003"],
        env={**os.environ, "DATABASE_URL": db_url, "BACKUP_DIR": str(backups),
             "ENVIRONMENT": "production"},
        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "  table api_tokens: 1 row (004)" in result.stdout
    assert "refusing to downgrade production without confirmation" in result.stderr
    assert scalar(db_url, "SELECT count(*) FROM api_tokens") == 1


def test_drops_of_what_the_database_lacks_destroy_nothing_and_bad_sql_is_unknown(
    sqlite_url, tmp_path, backups
):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, "pass", '''
        op.execute("DROP TABLE IF EXISTS ghost")
        op.execute("ALTER TABLE tasks DROP COLUMN IF EXISTS ghost")
        op.execute("ALTER TABLE ghost DROP COLUMN IF EXISTS ghost")
        op.drop_column("agents", "name")
        op.execute("DROP TABLE IF EXISTS agents")
        op.execute("DROP TABL agents")
    ''')
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_dir=backups) as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        preview = manager.preview_downgrade(manager.plan_downgrade("-1"))
    # The column goes with its table; the misspelt statement cannot be read.
    assert preview.tables == (DroppedTable("005", "agents", 1),) and preview.columns == ()
    assert [u.revision for u in preview.unknown] == ["005"]
    assert preview.unknown[0].reason.startswith("unparsable SQL: ")
