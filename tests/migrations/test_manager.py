"""MigrationManager: status in every state, and each failure as a typed error with its fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.migrations import (
    DatabaseAheadError,
    DatabaseUnreachableError,
    EmptyMigrationError,
    MigrationError,
    MigrationFailedError,
    MigrationManager,
    MultipleHeadsError,
    NotAtHeadError,
    UnknownRevisionError,
    UnversionedDatabaseError,
)
from orchestrator.migrations.environment import next_revision_id
from orchestrator.migrations.manager import alembic_config
from tests.schema import execute, scalar, snapshot

PROJECT_SCRIPTS = Path(__file__).resolve().parents[2] / "src/orchestrator/migrations/alembic"


def head_of(manager: MigrationManager) -> str:
    return manager.get_head_revision()


# -- status ---------------------------------------------------------------------------------


def test_status_of_a_missing_sqlite_file_is_fresh_and_does_not_create_it(sqlite_url: str):
    manager = MigrationManager(sqlite_url)
    status = manager.status()
    assert status.current is None and not status.database_exists
    assert status.pending[:3] == ("001", "002", "003") and status.pending[-1] == status.head
    assert not status.up_to_date and manager.needs_migration()
    assert manager.get_current_revision() is None
    assert manager.history()[0].applied is False
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_status_of_an_empty_database_lists_everything_pending(manager: MigrationManager):
    manager.upgrade("001")
    manager.downgrade("base")
    status = manager.status()
    assert status.current is None and status.database_exists and not status.unversioned
    assert status.pending == tuple(r.revision for r in manager.history())


def test_status_of_a_partial_database(manager: MigrationManager):
    manager.upgrade("002")
    status = manager.status()
    assert status.current == "002"
    assert status.pending[0] == "003" and status.pending[-1] == head_of(manager)
    assert manager.pending_revisions() == list(status.pending)
    assert [info.revision for info in manager.history() if info.applied] == ["001", "002"]


def test_status_of_a_current_database(manager: MigrationManager):
    manager.upgrade()
    status = manager.status()
    assert status.up_to_date and status.pending == () and status.current == status.head
    assert not manager.needs_migration()
    assert status.as_dict()["up_to_date"] is True
    assert manager.history()[-1].is_head and manager.history()[-1].applied


def test_status_of_a_database_ahead_of_the_code(manager: MigrationManager):
    manager.upgrade()
    execute(manager.database_url, "UPDATE alembic_version SET version_num = '999'")
    status = manager.status()
    assert status.ahead and not status.up_to_date and status.current == "999"
    with pytest.raises(DatabaseAheadError, match="999.*does not know.*stamp"):
        manager.upgrade()
    with pytest.raises(DatabaseAheadError):
        manager.downgrade("base")


def test_unversioned_database_suggests_stamp(manager: MigrationManager):
    execute(manager.database_url, "CREATE TABLE legacy (id INTEGER PRIMARY KEY)")
    status = manager.status()
    assert status.unversioned and not status.up_to_date
    with pytest.raises(UnversionedDatabaseError, match="orchestrator db stamp"):
        manager.upgrade()


def test_database_recording_several_revisions_is_reported(manager: MigrationManager):
    manager.upgrade("002")
    execute(manager.database_url, "INSERT INTO alembic_version (version_num) VALUES ('001')")
    with pytest.raises(MultipleHeadsError, match="several revisions"):
        manager.status()
    manager.stamp("002")  # what the message says to do
    assert scalar(manager.database_url, "SELECT count(*) FROM alembic_version") == 1
    assert manager.get_current_revision() == "002"


# -- targets --------------------------------------------------------------------------------


def test_relative_and_prefix_targets(manager: MigrationManager):
    assert manager.upgrade("+2") == ["001", "002"]
    assert manager.plan_downgrade("-1") == ["002"]
    assert manager.downgrade("-1") == ["002"]
    with pytest.raises(UnknownRevisionError, match="unknown revision '00'"):  # not unique
        manager.plan_upgrade("00")
    assert manager.upgrade(revision="003") == ["002", "003"]


@pytest.mark.parametrize("target", ["zzz", "+99", "-9"])
def test_unknown_targets_are_refused_before_anything_runs(manager: MigrationManager, target: str):
    manager.upgrade("001")
    with pytest.raises(UnknownRevisionError):
        manager.upgrade(target) if target != "-9" else manager.downgrade(target)
    assert manager.get_current_revision() == "001"


def test_downgrade_to_a_newer_revision_is_refused(manager: MigrationManager):
    manager.upgrade("001")
    with pytest.raises(UnknownRevisionError, match="newer than"):
        manager.downgrade("003")


def test_nothing_to_do_returns_empty(manager: MigrationManager):
    manager.upgrade()
    assert manager.upgrade() == []
    manager.downgrade("base")
    assert manager.downgrade("base") == []


# -- stamp, create, sql ---------------------------------------------------------------------


def test_stamp_records_a_revision_without_running_it(manager: MigrationManager):
    manager.upgrade("003")
    execute(manager.database_url, "DROP TABLE alembic_version")
    assert manager.status().unversioned
    manager.stamp("003")
    assert manager.get_current_revision() == "003"
    manager.stamp("base")
    assert manager.get_current_revision() is None
    with pytest.raises(UnknownRevisionError):
        manager.stamp("nope")


def test_a_relative_stamp_counts_from_the_database_revision(manager: MigrationManager):
    manager.upgrade("002")
    manager.stamp("+1")
    assert manager.get_current_revision() == "003"
    manager.stamp("-2")
    assert manager.get_current_revision() == "001"
    execute(manager.database_url, "UPDATE alembic_version SET version_num = '999'")
    with pytest.raises(UnknownRevisionError, match="counts from the database's revision 999"):
        manager.stamp("-1")
    assert manager.get_current_revision() == "999"


def _copy_scripts(tmp_path: Path, keep: tuple[str, ...] = ("001", "002", "003")) -> str:
    """A scratch copy of the project's scripts folder holding only `keep`."""
    target = tmp_path / "scripts"
    shutil.copytree(PROJECT_SCRIPTS, target, ignore=shutil.ignore_patterns("__pycache__"))
    for script in (target / "versions").glob("*.py"):
        if not script.name.startswith(keep):
            script.unlink()
    return str(target)


def test_create_writes_the_next_numbered_revision_and_refuses_empty(sqlite_url, tmp_path):
    scripts = _copy_scripts(tmp_path)
    manager = MigrationManager(sqlite_url, script_location=scripts)
    with pytest.raises(NotAtHeadError, match="orchestrator db upgrade"):
        manager.create("too early")
    manager.upgrade()
    manager.close()
    with pytest.raises(MigrationError, match="needs a message"):
        manager.create("  ")
    # The models may already be ahead of this copy (e.g. a newer table): drop them from the
    # comparison by creating a hand-written revision, then check the empty refusal at head.
    path = manager.create("hand written", autogenerate=False)
    assert path.name == "004_hand_written.py"
    assert "revision: str = '004'" in path.read_text()
    assert manager.get_head_revision() == "004"
    manager.upgrade()
    assert manager.create_migration("second", auto=False).endswith("005_second.py")


def test_any_message_gives_a_script_that_loads(sqlite_url, tmp_path):
    """The message becomes the script's docstring: quotes and backslashes must not break it."""
    import ast

    manager = MigrationManager(sqlite_url, script_location=_copy_scripts(tmp_path))
    manager.upgrade()
    message = 'say """"hi""""" to C:\\new\\N{x} and "\\'
    path = manager.create(message, autogenerate=False)
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert docstring.splitlines()[0] == message
    assert manager.get_head_revision() == "004"
    manager.upgrade()
    assert manager.get_current_revision() == "004"


@pytest.mark.postgres
def test_autogenerate_finds_model_changes_and_refuses_no_change(postgres_url, tmp_path):
    # PostgreSQL: the draft adds a foreign key to an existing table (agents.owner_id), which
    # SQLite cannot do outside batch mode.
    manager = MigrationManager(postgres_url, script_location=_copy_scripts(tmp_path, ("001",)))
    manager.upgrade()
    path = manager.create("catch up with the models")
    assert path.name == "002_catch_up_with_the_models.py"
    assert "priority_level" in path.read_text()
    manager.upgrade()
    with pytest.raises(EmptyMigrationError, match="--empty"):
        manager.create("nothing changed")
    assert sorted(p.name[:3] for p in path.parent.glob("*.py")) == ["001", "002"]


def test_multiple_heads_are_refused_with_the_rebase_command(sqlite_url, tmp_path):
    scripts = _copy_scripts(tmp_path)
    branch = Path(scripts) / "versions" / "003_add_task_indexes.py"
    text = branch.read_text().replace('revision: str = "003"', 'revision: str = "103"')
    (Path(scripts) / "versions" / "103_branch.py").write_text(text)
    manager = MigrationManager(sqlite_url, script_location=scripts)
    with pytest.raises(MultipleHeadsError, match=r"003_add_task_indexes.py and 103_branch.py "
                       r"both revise 002, .*`orchestrator db rebase`"):
        manager.status()


def test_next_revision_id_continues_the_sequence():
    config = alembic_config("sqlite:///unused.db")
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config)
    assert int(next_revision_id(script)) == int(script.get_current_head()) + 1


def test_offline_sql_covers_a_range_in_both_directions(sqlite_url: str):
    manager = MigrationManager(sqlite_url)
    up = manager.sql("003", start="001")
    assert "Running upgrade 001 -> 002" in up and "CREATE INDEX ix_tasks_status " in up
    assert "CREATE TABLE users" not in up
    down = manager.sql("001", start="003")
    assert "DROP INDEX ix_tasks_status" in down and "DROP COLUMN priority_level" in down
    assert "CREATE TABLE users" in manager.sql("001")
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


@pytest.mark.postgres
def test_offline_sql_for_postgresql_builds_indexes_concurrently(postgres_url: str):
    sql = MigrationManager(postgres_url).sql("003", start="002")
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_tasks_status_priority_created" in sql


# -- failures -------------------------------------------------------------------------------


def test_a_failing_migration_names_its_revision_and_keeps_the_last_good_one(
    db_url: str, tmp_path: Path
):
    scripts = _copy_scripts(tmp_path)
    broken = Path(scripts) / "versions" / "003_add_task_indexes.py"
    broken.write_text(
        broken.read_text().replace(
            "def upgrade() -> None:\n",
            "def upgrade() -> None:\n    op.execute('CREATE TABLE half_done (id INTEGER)')\n"
            "    raise RuntimeError('boom')\n",
        )
    )
    manager = MigrationManager(db_url, script_location=scripts)
    with pytest.raises(MigrationFailedError, match="migration 003 failed.*boom.*at 002") as info:
        manager.upgrade()
    assert info.value.revision == "003"
    assert manager.get_current_revision() == "002"
    # One transaction per migration: nothing of 003 is left half-applied.
    assert "half_done" not in snapshot(db_url)


def test_a_failing_downgrade_leaves_the_revision_in_place(db_url: str, tmp_path: Path):
    scripts = _copy_scripts(tmp_path)
    broken = Path(scripts) / "versions" / "002_add_priority_level.py"
    broken.write_text(
        broken.read_text().replace(
            "def downgrade() -> None:\n", "def downgrade() -> None:\n    raise RuntimeError('no')\n"
        )
    )
    manager = MigrationManager(db_url, script_location=scripts, backup_dir=tmp_path / "b")
    manager.upgrade()
    # A downgrade that raises offline too cannot say what it drops: it is taken as destroying
    # data, so a backup comes first, and on SQLite the whole command then runs in one
    # transaction (docs/migrations.md): the failure rolls back the steps above 002 with it.
    expected = manager.get_head_revision() if manager.dialect == "sqlite" else "002"
    with pytest.raises(MigrationFailedError, match=f"migration 002 failed.*at {expected}"):
        manager.downgrade("base")
    assert manager.get_current_revision() == expected
    assert [u.revision for u in manager.last_preview.unknown] == ["002"]


def test_unreachable_postgresql_gives_a_masked_one_line_error():
    manager = MigrationManager("postgresql://ada:s3cret@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnreachableError) as info:
        manager.status()
    message = str(info.value)
    assert "s3cret" not in message and "***" in message and "\n" not in message
    assert info.value.exit_code == 3


def test_missing_folder_for_sqlite_is_reported(tmp_path: Path):
    manager = MigrationManager(f"sqlite:///{tmp_path}/no/such/dir/app.db")
    assert not manager.status().database_exists
    with pytest.raises(DatabaseUnreachableError, match="folder .* does not exist"):
        manager.upgrade()


def test_unknown_driver_is_reported():
    manager = MigrationManager("postgresql+asyncpg://u@127.0.0.1/x")
    with pytest.raises(DatabaseUnreachableError, match="driver .* not installed"):
        manager.status()


def test_sqlite_file_that_is_not_a_database(tmp_path: Path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseUnreachableError, match="not a database"):
        MigrationManager(f"sqlite:///{path}").status()


def test_manager_works_as_a_context_manager(sqlite_url: str):
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade("001")
        assert scalar(sqlite_url, "SELECT count(*) FROM users") == 0
    assert manager._engine is None


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "expected"),
    [({"database": "orch_no_such_db"}, "does not exist"), ({"username": "no_such_role"}, "no_such_role")],
)
def test_missing_postgresql_database_or_role_is_one_masked_line(postgres_url, change, expected):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password="s3cret", **change)
    with pytest.raises(DatabaseUnreachableError) as info:
        MigrationManager(url.render_as_string(hide_password=False)).status()
    message = str(info.value)
    assert expected in message and "s3cret" not in message and "\n" not in message


def test_status_rereads_when_another_migrator_commits_between_two_reads(sqlite_url: str):
    """Reading "no version table" and then "tables exist" means a migrator just committed 001
    in between (READ COMMITTED on PostgreSQL): the version is read again, not "unversioned"."""
    import sqlite3

    from sqlalchemy import event

    manager = MigrationManager(sqlite_url)
    manager.upgrade("001")
    execute(sqlite_url, "ALTER TABLE alembic_version RENAME TO hidden_version")

    def another_migrator_commits(conn, cursor, statement, *args) -> None:
        # Right after the failed read, as the table list is read.
        if "sqlite_master" in statement and "hidden_version" in _tables(sqlite_url):
            raw = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
            raw.execute("ALTER TABLE hidden_version RENAME TO alembic_version")
            raw.commit()
            raw.close()

    event.listen(manager.engine, "before_cursor_execute", another_migrator_commits)
    status = manager.status()
    assert status.current == "001" and not status.unversioned


def _tables(sqlite_url: str) -> set[str]:
    import sqlite3

    raw = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    try:
        return {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    finally:
        raw.close()


# -- what the scripts and the history cannot tell -----------------------------------------------


def test_scripts_that_do_not_form_a_chain_are_one_line(sqlite_url):
    """Alembic's own complaint (a parent that no script has) is not a bug of ours."""
    from orchestrator.migrations import BrokenScriptError
    from tests.fixtures import VALIDATOR_SETS

    manager = MigrationManager(sqlite_url, script_location=str(VALIDATOR_SETS / "broken_chain"))
    with pytest.raises(BrokenScriptError, match=r"^the migration scripts in .*broken_chain do "
                                                r"not form a chain \(KeyError: '002'\); "
                                                r"`orchestrator db validate` names the script"):
        manager.status()


def test_a_database_without_the_history_table_has_nothing_interrupted(manager):
    manager.upgrade()
    execute(manager.database_url, "DROP TABLE migration_history")
    status = manager.status()
    assert status.up_to_date and status.interrupted is None


def test_a_sqlite_upgrade_with_a_backup_waits_for_the_write_lock_then_gives_up(
    sqlite_url, tmp_path, monkeypatch
):
    """It takes the write lock before its backup; a writer that keeps it longer than the busy
    timeout makes it give up, with exit code 5 (like a table lock) and nothing done."""
    import sqlite3

    from orchestrator import db
    from orchestrator.migrations import DatabaseLockTimeout

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT", 0.5)
    with MigrationManager(sqlite_url, backup_before_migrate=True,
                          backup_dir=tmp_path / "b") as manager:
        manager.upgrade("002")
        writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO agents (name) VALUES ('busy')")
            with pytest.raises(DatabaseLockTimeout, match=r"^the upgrade gave up waiting for "
                                                          r"the database's write lock \(database "
                                                          r"is locked\): .* more than 0.5s; retry "
                                                          r"later") as refused:
                manager.upgrade()
        finally:
            writer.close()
        assert refused.value.exit_code == 5
        assert manager.get_current_revision() == "002" and manager.backups() == []
        assert manager.upgrade()  # once the writer is done
