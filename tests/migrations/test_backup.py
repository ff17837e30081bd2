"""Backups and restores on SQLite and PostgreSQL, the automatic backup, and restoring after failure."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from orchestrator.db import create_engine
from orchestrator.migrations import DatabaseUnreachableError, MigrationFailedError, MigrationManager
from orchestrator.migrations import backup
from orchestrator.migrations.backup import BackupError, BackupToolMissing, NotABackupError
from tests.conftest import require_postgres
from tests.fixtures import Writer, add_revision, command_runner, copy_scripts
from orchestrator.migrations.validate import diff_schemas, schema_snapshot, validate
from tests.schema import execute, scalar, seed_rows


def every_table(url: str) -> dict[str, tuple[int, str]]:
    """Row count and a SHA-256 of the rows of every table, bookkeeping included."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            hashes = {}
            for table in sorted(inspect(connection).get_table_names()):
                width = len(inspect(connection).get_columns(table))
                order = ", ".join(str(i) for i in range(1, width + 1))
                rows = connection.execute(text(f"SELECT * FROM {table} ORDER BY {order}")).all()
                digest = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
                hashes[table] = (len(rows), digest)
            return hashes
    finally:
        engine.dispose()


def app_tables(url: str) -> dict[str, tuple[int, str]]:
    hashes = every_table(url)
    hashes.pop("migration_history", None)
    return hashes


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def at_head(db_url: str, backups: Path):
    with MigrationManager(db_url, lock_timeout=30, backup_dir=backups) as manager:
        manager.upgrade()
        seed_rows(db_url)
        yield manager


# -- backup, change, restore --------------------------------------------------------------------


def test_backup_then_change_then_restore_gives_the_exact_content(at_head: MigrationManager, db_url: str):
    if at_head.dialect == "postgresql":
        execute(db_url, "CREATE FUNCTION kept_sum(a integer, b integer) RETURNS integer "
                        "LANGUAGE sql AS 'SELECT a + b'")
    before = every_table(db_url)
    schema = schema_snapshot(db_url)
    progress: list[tuple[int, int | None]] = []
    info = at_head.backup(progress=lambda done, total: progress.append((done, total)))
    assert info.revision == at_head.get_head_revision() and info.reason == "manual"
    assert info.path.parent == at_head.backup_dir and info.path.exists() and progress
    assert info.size == info.path.stat().st_size
    sidecar = json.loads(info.sidecar.read_text())
    assert sidecar["revision"] == info.revision and sidecar["dialect"] == at_head.dialect

    execute(
        db_url,
        "DELETE FROM tasks WHERE status = 'done'",
        "UPDATE users SET name = 'Changed'",
        "INSERT INTO agents (name, owner_id) VALUES ('intruder', 1)",
        "CREATE TABLE created_after_the_backup (id INTEGER PRIMARY KEY)",
        "CREATE VIEW view_after_the_backup AS SELECT id FROM users",
    )
    if at_head.dialect == "postgresql":
        execute(db_url, "CREATE TYPE mood AS ENUM ('calm', 'busy')",
                "CREATE DOMAIN positive AS integer CHECK (VALUE > 0)",
                "CREATE SEQUENCE loose_numbers",
                "CREATE FUNCTION added_concat(a integer, b text) RETURNS text "
                "LANGUAGE sql AS 'SELECT a::text || b'",
                "CREATE PROCEDURE added_procedure() LANGUAGE sql AS 'SELECT 1'",
                "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql "
                "AS 'BEGIN NEW.name := NEW.name; RETURN NEW; END'",
                "CREATE TRIGGER touch_users BEFORE UPDATE ON users "
                "FOR EACH ROW EXECUTE FUNCTION touch()")
    assert every_table(db_url) != before

    report = at_head.restore(info.path, progress=lambda done, total: progress.append((done, total)))
    assert every_table(db_url) == before
    assert diff_schemas(schema, schema_snapshot(db_url)) == []
    assert validate(db_url, rules=["MIG005", "MIG006"]).passed == ["MIG005", "MIG006"]
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert "view_after_the_backup" not in inspect(connection).get_view_names()
    engine.dispose()
    if at_head.dialect == "postgresql":
        # Routines and triggers made after the backup go too; one the backup has stays.
        routines = "SELECT string_agg(proname, ',' ORDER BY proname) FROM pg_proc " \
                   "WHERE pronamespace = 'public'::regnamespace"
        assert scalar(db_url, routines) == "kept_sum"
        assert scalar(db_url, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
    assert report.restored.path == info.path and report.revision == info.revision
    # The state the restore replaced was saved first, and is itself restorable.
    assert report.safety_backup.reason == "before-restore"
    at_head.restore(report.safety_backup.path)
    assert scalar(db_url, "SELECT count(*) FROM agents WHERE name = 'intruder'") == 1


def test_backup_of_a_database_before_any_migration_records_base(db_url: str, backups: Path):
    with MigrationManager(db_url, backup_dir=backups) as manager:
        if manager.dialect == "sqlite":
            with pytest.raises(BackupError, match="nothing to back up: .* does not exist yet"):
                manager.backup()
            execute(db_url, "CREATE TABLE IF NOT EXISTS placeholder (id INTEGER)")
        info = manager.backup(backups / "first.bak")
        assert info.revision is None and info.path == backups / "first.bak"


def test_restore_into_a_sqlite_file_that_does_not_exist_yet(sqlite_url: str, tmp_path: Path):
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        before = every_table(sqlite_url)
        info = manager.backup()
    Path(sqlite_url.removeprefix("sqlite:///")).unlink()
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        report = manager.restore(info.path)
        assert report.safety_backup is None
    assert every_table(sqlite_url) == before


@pytest.mark.parametrize("auto_vacuum", ["NONE", "FULL"])
def test_restoring_a_backup_of_a_database_without_tables(sqlite_url, tmp_path, auto_vacuum):
    """A one-page file (no tables, only its header) restores in one step of SQLite's backup:
    it gets a free page, so that the safety copy still comes under the write lock."""
    empty = tmp_path / "empty.sqlite"
    connection = sqlite3.connect(empty)
    connection.execute(f"PRAGMA auto_vacuum={auto_vacuum}")
    connection.execute("PRAGMA user_version=7")
    connection.close()
    assert empty.stat().st_size == 4096
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        before = every_table(sqlite_url)
        report = manager.restore(empty)
        assert every_table(sqlite_url) == {} and report.revision is None
        assert not report.unversioned
        assert scalar(sqlite_url, "PRAGMA user_version") == 7
        assert every_table(f"sqlite:///{report.safety_backup.path}") == before


def test_a_database_that_records_several_revisions_can_still_be_restored(sqlite_url, tmp_path):
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        good = manager.backup()
        execute(sqlite_url, "INSERT INTO alembic_version VALUES ('003')")
        report = manager.restore(good.path)
        assert report.revision == "006" and report.safety_backup is not None
        assert manager.status().up_to_date


# -- nothing committed is lost: a writer runs throughout ------------------------------------------


def writer_rows(url: str) -> set[str]:
    """The rows the test writer (tests/fixtures/writer.py) committed that a database holds."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(
                text("SELECT name FROM agents WHERE name LIKE 'writer-%'")).scalars())
    finally:
        engine.dispose()


def writer_rows_in_backup(info: backup.BackupInfo) -> set[str]:
    if info.dialect == "sqlite":
        return writer_rows(f"sqlite:///{info.path}")
    listing = subprocess.run(["pg_restore", "--data-only", "--table=agents", "--file=-",
                              str(info.path)], capture_output=True, text=True, check=True)
    return {word for line in listing.stdout.splitlines() for word in line.split("\t")
            if word.startswith("writer-")}


def test_a_restore_loses_no_commit_of_a_writer_running_throughout(at_head, db_url, tmp_path):
    """Every row a writer was told was committed is in the safety backup (it was committed
    before the restore) or in the restored database (after it); none falls between the two."""
    if at_head.dialect == "sqlite":
        # Large enough that copying it takes a while, with writers waiting on it meanwhile.
        execute(db_url, "INSERT INTO tasks (project_id, title, description) "
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                        "WHERE i < 100000) SELECT 1, 'bulk ' || i, hex(randomblob(40)) FROM n")
    target = at_head.backup()
    said: list[str] = []
    at_head.notify = said.append
    with Writer(db_url, tmp_path) as writer:
        writer.wait_for(50)
        report = at_head.restore(target.path)
        writer.wait_for(50)  # and it writes into the restored database
        acknowledged = set(writer.stop())
    kept, restored = writer_rows_in_backup(report.safety_backup), writer_rows(db_url)
    assert kept and restored and not kept & restored
    assert acknowledged - kept - restored == set()
    if at_head.dialect == "postgresql":
        assert any(line.startswith("ending 1 other session of the database (") for line in said)
        # The database is writable again for everyone: the sessions the restore opened are gone.
        assert scalar(db_url, "SELECT count(*) FROM pg_db_role_setting "
                              "WHERE setdatabase = (SELECT oid FROM pg_database "
                              "WHERE datname = current_database())") == 0


def test_a_wal_database_restore_loses_no_commit_of_a_writer_running_throughout(sqlite_url,
                                                                              tmp_path):
    """In WAL mode the restore holds the WAL's write lock (readers go on reading the old
    content meanwhile); the safety copy is read through SQLite, under that lock."""
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        target = manager.backup()
        wal = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        assert wal.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        wal.close()
        with Writer(sqlite_url, tmp_path) as writer:
            writer.wait_for(50)
            report = manager.restore(target.path)
            writer.wait_for(50)
            acknowledged = set(writer.stop())
    kept, restored = writer_rows_in_backup(report.safety_backup), writer_rows(sqlite_url)
    assert kept and restored and not kept & restored
    assert acknowledged - kept - restored == set()


_SLOW_AND_FAILING = """
time.sleep(float(os.environ.get("ORCH_TEST_STEP_SECONDS", "0")))
op.execute("DELETE FROM agents WHERE name = 'worker-1'")
raise RuntimeError("boom: unexpected data")
"""


def test_a_failed_sqlite_migration_loses_no_commit_of_a_writer_running_throughout(
    sqlite_url, tmp_path, backups, monkeypatch
):
    """With a backup first, the command holds the write lock from before its backup to its
    end: writers wait (or are refused), and the rollback after the failure takes nothing of
    theirs. Before, what they committed after the backup vanished in the automatic restore."""
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, "pass", doc="A step that works.")
    add_revision(scripts, _SLOW_AND_FAILING)
    monkeypatch.setenv("ORCH_TEST_STEP_SECONDS", "1")
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_dir=backups,
                          backup_before_migrate=True) as manager:
        manager.upgrade("004")
        seed_rows(sqlite_url)
        with Writer(sqlite_url, tmp_path) as writer:
            writer.wait_for(50)
            with pytest.raises(MigrationFailedError) as failure:
                manager.upgrade()
            writer.wait_for(50)
            acknowledged = set(writer.stop())
        assert manager.get_current_revision() == "004"
        assert acknowledged and acknowledged <= writer_rows(sqlite_url)
        assert scalar(sqlite_url, "SELECT count(*) FROM agents WHERE name = 'worker-1'") == 1
        # The backup was taken under the same lock: it holds what was committed before.
        assert writer_rows_in_backup(manager.last_backup) <= acknowledged
    assert "was rolled back: the database is back at 004, as before the command" in str(
        failure.value)


# -- what restore refuses -------------------------------------------------------------------------


def _sqlite_file(path: Path) -> Path:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (id INTEGER)")
    connection.commit()
    connection.close()
    return path


def test_restore_refuses_files_that_are_not_backups_of_this_kind_of_database(at_head, db_url, tmp_path):
    before = every_table(db_url)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("just some notes, certainly not a database\n")
    sqlite_file = _sqlite_file(tmp_path / "other.sqlite")
    dump = tmp_path / "other.dump"
    dump.write_bytes(b"PGDMP" + os.urandom(2048))

    with pytest.raises(NotABackupError, match="neither a SQLite database nor a pg_dump"):
        at_head.restore(text_file)
    with pytest.raises(BackupError, match="does not exist; list backups with"):
        at_head.restore(tmp_path / "missing.sqlite")
    with pytest.raises(NotABackupError, match="is a folder"):
        at_head.restore(tmp_path)
    if at_head.dialect == "sqlite":
        with pytest.raises(NotABackupError, match="PostgreSQL pg_dump archive, not a backup of a SQLite"):
            at_head.restore(dump)
    else:
        with pytest.raises(NotABackupError, match="SQLite database, not a backup of a PostgreSQL"):
            at_head.restore(sqlite_file)
    assert every_table(db_url) == before
    assert at_head.backups() == []  # nothing was even backed up: refused before touching anything


def test_restore_refuses_a_backup_whose_sidecar_describes_another_kind(sqlite_url, tmp_path):
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade("001")
        info = manager.backup()
        document = json.loads(info.sidecar.read_text())
        info.sidecar.write_text(json.dumps({**document, "dialect": "postgresql"}))
        with pytest.raises(NotABackupError, match="but its sidecar .* describes a PostgreSQL"):
            manager.restore(info.path)


def test_restore_refuses_a_damaged_sqlite_file(sqlite_url, tmp_path):
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(backup.SQLITE_MAGIC + b"\x00" * 84 + os.urandom(4000))
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade("001")
        with pytest.raises(NotABackupError, match="is a damaged SQLite file"):
            manager.restore(damaged)
        assert manager.get_current_revision() == "001"


def test_restore_refuses_a_sqlite_backup_damaged_past_its_first_page(sqlite_url, tmp_path):
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        info = manager.backup()
        with open(info.path, "r+b") as data:  # the header stays good: only later pages are hit
            data.seek(4096 * 3)
            data.write(os.urandom(4096 * 4))
        before = every_table(sqlite_url)
        with pytest.raises(NotABackupError, match="is a damaged SQLite file"):
            manager.restore(info.path)
        assert every_table(sqlite_url) == before


def seeded_with_a_backup(sqlite_url: str, folder: Path):
    """(the database file, a backup of it at head with rows, its tables' content)."""
    with MigrationManager(sqlite_url, backup_dir=folder) as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        good = manager.backup()
    return Path(sqlite_url.removeprefix("sqlite:///")), good, every_table(sqlite_url)


@pytest.mark.parametrize("damage_from", [4096, 0], ids=["pages", "header"])
def test_restore_puts_a_backup_in_place_of_a_database_too_damaged_to_read(sqlite_url, tmp_path,
                                                                        run_here, damage_from):
    database, good, before = seeded_with_a_backup(sqlite_url, tmp_path / "b")
    database.chmod(0o640)
    with open(database, "r+b") as data:
        data.seek(damage_from)
        data.write(os.urandom(database.stat().st_size - damage_from))
    damaged_bytes = database.read_bytes()
    env = {"BACKUP_DIR": str(tmp_path / "b")}
    status = run_here("db", "status", "--database-url", sqlite_url, env=env)
    assert status.returncode == 3

    restored = run_here("db", "restore", str(good.path), "--yes", "--database-url", sqlite_url,
                        env=env)
    assert restored.returncode == 0, restored.stderr
    assert every_table(sqlite_url) == before and database.stat().st_mode & 0o777 == 0o640
    [kept] = [info for info in MigrationManager(sqlite_url, backup_dir=tmp_path / "b").backups()
              if info.reason == "damaged"]
    assert kept.path.read_bytes() == damaged_bytes and kept.revision is None
    assert f"Saved the state it replaced to {kept.path}" in restored.stdout
    listed = run_here("db", "backups", "--database-url", sqlite_url, env=env)
    assert any(line.split()[2:4] == ["?", "damaged"] for line in listed.stdout.splitlines())


def test_damage_that_sqlite_reports_as_a_finding_is_named(tmp_path):
    """`quick_check` answers some damage with rows rather than an error (here two indexes
    share a page): that answer is the damage, not "readable"."""
    path = tmp_path / "shared-page.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.executescript("CREATE TABLE t (a); INSERT INTO t VALUES (1), (2);"
                             "CREATE INDEX i ON t (a); CREATE TABLE u (a); CREATE INDEX j ON u (a)")
    [root] = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'j'").fetchone()
    connection.execute("PRAGMA writable_schema = ON")
    connection.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = 'i'", (root,))
    connection.close()
    assert "2nd reference to page" in backup.sqlite_damage(f"sqlite:///{path}")


def test_restoring_over_a_damaged_wal_database_replays_nothing_of_it(sqlite_url, tmp_path):
    """The damaged file's write-ahead log, still open in another connection (a running API),
    must not be replayed into the restored file; it is kept with the damaged copy."""
    database, good, before = seeded_with_a_backup(sqlite_url, tmp_path / "b")
    api = sqlite3.connect(database, isolation_level=None)
    try:
        api.execute("PRAGMA journal_mode=WAL")
        api.execute("PRAGMA wal_autocheckpoint=0")
        api.execute("INSERT INTO agents (name, owner_id) VALUES ('only in the damaged WAL', 1)")
        with open(database, "r+b") as data:  # damage the main file; its log holds the insert
            data.seek(4096)
            data.write(os.urandom(database.stat().st_size - 4096))
        with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
            report = manager.restore(good.path)
        assert report.safety_backup.reason == "damaged"
        kept_log = report.safety_backup.path.with_name(report.safety_backup.path.name + "-wal")
        assert kept_log.exists() and kept_log.stat().st_size > 0
        assert every_table(sqlite_url) == before
    finally:
        api.close()
    assert every_table(sqlite_url) == before


def test_restore_into_a_folder_where_the_database_should_be_says_so(tmp_path):
    backup_file = _sqlite_file(tmp_path / "some.sqlite")
    (tmp_path / "folder.db").mkdir()
    manager = MigrationManager(f"sqlite:///{tmp_path / 'folder.db'}", backup_dir=tmp_path / "b")
    with pytest.raises(DatabaseUnreachableError, match="cannot reach the database"):
        manager.restore(backup_file)
    assert (tmp_path / "folder.db").is_dir() and not (tmp_path / "b").exists()


def test_restore_refuses_the_database_itself(sqlite_url, tmp_path):
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade("001")
        with pytest.raises(NotABackupError, match="is the database itself"):
            manager.restore(sqlite_url.removeprefix("sqlite:///"))
        assert manager.backups() == [] and manager.get_current_revision() == "001"


def test_a_sqlite_restore_gives_up_when_another_connection_keeps_the_database_busy(
    sqlite_url, tmp_path, monkeypatch
):
    monkeypatch.setattr("orchestrator.migrations.backup.limits.BUSY_TIMEOUT", 0.5)
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade("001")
        info = manager.backup()
        manager.upgrade()
        reader = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM users").fetchone()  # holds a read lock
            with pytest.raises(BackupError, match=r"stayed busy for more than 0.5s"):
                manager.restore(info.path)
        finally:
            reader.close()
        assert manager.get_current_revision() == manager.get_head_revision()


@pytest.fixture
def archive_naming_a_lost_role(postgres_url, tmp_path):
    """A whole, readable backup whose restore fails midway: a table in it belongs to a role
    that was dropped since (as when an archive comes from another server)."""
    role = f"orch_gone_{uuid.uuid4().hex[:8]}"
    execute(postgres_url, f'CREATE ROLE "{role}"')
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        execute(postgres_url, f'ALTER TABLE agents OWNER TO "{role}"')
        info = manager.backup()
    execute(postgres_url, "ALTER TABLE agents OWNER TO CURRENT_USER", f'DROP ROLE "{role}"')
    return info.path


@pytest.mark.postgres
def test_a_failed_postgres_restore_changes_nothing(postgres_url, tmp_path,
                                                   archive_naming_a_lost_role):
    """The restore runs in one transaction: a failure midway rolls it all back, the drops of
    what was made after the backup included."""
    execute(postgres_url, "CREATE TABLE created_after_the_backup (id integer)",
            "INSERT INTO created_after_the_backup VALUES (1), (2)")
    before = every_table(postgres_url)
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        with pytest.raises(BackupError, match=r"^the restore failed for .*: role .* does not "
                                              r"exist; nothing was restored: the database is as "
                                              r"it was \(its state before the restore is also in "
                                              r".*before-restore\.dump\)$"):
            manager.restore(archive_naming_a_lost_role)
    assert every_table(postgres_url) == before
    assert scalar(postgres_url, "SHOW default_transaction_read_only") == "off"


@pytest.mark.postgres
def test_a_postgres_restore_interrupted_midway_changes_nothing(postgres_url, tmp_path):
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        info = manager.backup()
        execute(postgres_url, "CREATE TABLE created_after_the_backup (id integer)",
                "INSERT INTO created_after_the_backup VALUES (1), (2)")
        before = every_table(postgres_url)

        def ctrl_c(done, total):
            if total is not None:  # pg_restore's progress (pg_dump's has no total)
                raise KeyboardInterrupt  # after the drops, before the end

        said: list[str] = []
        manager.notify = said.append
        with pytest.raises(KeyboardInterrupt):  # the CLI says "Interrupted.", exit code 130
            manager.restore(info.path, progress=ctrl_c)
    assert said[-1].startswith("the restore was stopped (KeyboardInterrupt); nothing was "
                               "restored: the database is as it was (its state before the "
                               "restore is also in ")
    assert every_table(postgres_url) == before
    assert scalar(postgres_url, "SHOW default_transaction_read_only") == "off"
    # No pg_restore of ours is left running (others on the machine may run their own).
    children = subprocess.run(["ps", "--ppid", str(os.getpid()), "-o", "args="],
                              capture_output=True, text=True).stdout
    assert "pg_restore" not in children


@pytest.mark.postgres
def test_the_library_restores_without_a_safety_backup_when_asked(postgres_url, tmp_path,
                                                                  archive_naming_a_lost_role):
    """`backup.restore` without `safety_dir`: no safety dump, for a database that holds
    nothing to keep (the manager always asks for one)."""
    from tests.conftest import scratch_postgres_database

    with MigrationManager(postgres_url, backup_dir=tmp_path / "good") as manager:
        good = manager.backup()
    with scratch_postgres_database(require_postgres()) as fresh:
        report = backup.restore(fresh, good.path)
        assert report.safety_backup is None and report.revision == good.revision
        assert every_table(fresh) == every_table(postgres_url)
        with pytest.raises(BackupError, match="the restore failed for .*role .* does not exist"
                                              "; nothing was restored: the database is as it "
                                              "was$"):
            backup.restore(fresh, archive_naming_a_lost_role)


@pytest.mark.postgres
def test_an_archive_pg_restore_cannot_read_is_refused_before_anything_is_touched(postgres_url,
                                                                                tmp_path):
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        info = manager.backup()
        before = every_table(postgres_url)
        truncated = tmp_path / "truncated.dump"
        truncated.write_bytes(info.path.read_bytes()[: info.size * 3 // 4])
        with pytest.raises(NotABackupError, match="end of file; pick another backup"):
            manager.restore(truncated)
        assert every_table(postgres_url) == before and manager.backups() == [info]


@pytest.mark.postgres
@pytest.mark.parametrize("password", [None, "s3cret-word"])
def test_restore_reports_a_damaged_archive_without_the_password(postgres_url, tmp_path, password):
    url = make_url(postgres_url).set(password=password).render_as_string(hide_password=False)
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(b"PGDMP" + os.urandom(4000))
    with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade("001")
        with pytest.raises(BackupError) as failure:
            manager.restore(damaged)
    message = str(failure.value)
    assert message.startswith(f"pg_restore failed for {make_url(url)}: pg_restore: error: ")
    assert "s3cret-word" not in message


# -- listing and retention --------------------------------------------------------------------------


def test_backups_record_their_revision_and_only_the_newest_are_kept(sqlite_url, tmp_path):
    folder = tmp_path / "b"
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    with MigrationManager(other_url, backup_dir=folder) as other:
        other.upgrade("001")
        theirs = other.backup()
    with MigrationManager(sqlite_url, backup_dir=folder, backup_keep=2) as manager:
        taken = []
        for revision in ("001", "002", "003"):
            manager.upgrade(revision)
            taken.append(manager.backup())
        kept = manager.backups()
        assert [b.revision for b in kept] == ["003", "002"]
        assert [b.path for b in kept] == [taken[2].path, taken[1].path]
        assert not taken[0].path.exists() and not taken[0].sidecar.exists()
        assert f"-{taken[2].revision}-manual.sqlite" in taken[2].path.name
        # --output files live outside the retention, and other databases' backups are theirs.
        outside = manager.backup(tmp_path / "keep-me.sqlite")
        assert outside.path.exists() and manager.backups() == kept
        assert theirs.path.exists()
        # A sidecar that is not ours, or is damaged, or lost its file, is not a backup.
        (folder / "notes.json").write_text('{"hello": "world"}')
        (folder / "broken.sqlite.json").write_text("{not json")
        (folder / "list.json").write_text("[1, 2]")
        (folder / "strange.sqlite.json").write_text(json.dumps(
            {**json.loads(kept[0].sidecar.read_text()), "dialect": "oracle"}))
        (folder / "partial.sqlite.json").write_text(json.dumps(
            {"format": backup.SIDECAR_FORMAT, "dialect": "sqlite"}))
        kept[1].path.unlink()
        assert manager.backups() == [kept[0]]


def test_retention_never_deletes_a_file_the_user_named(sqlite_url, tmp_path, run_here):
    folder = tmp_path / "b"
    env = {"BACKUP_DIR": str(folder), "BACKUP_KEEP": "1"}
    MigrationManager(sqlite_url).upgrade()
    mine = folder / "mine.sqlite"
    made = run_here("db", "backup", "--output", str(mine), "--database-url", sqlite_url, env=env)
    assert made.returncode == 0, made.stderr
    for _ in range(3):
        assert run_here("db", "backup", "--database-url", sqlite_url, env=env).returncode == 0
    kept = MigrationManager(sqlite_url, backup_dir=folder).backups()
    assert mine.exists() and mine in [info.path for info in kept]
    assert sorted(info.automatic_name for info in kept) == [False, True]
    # Sidecars written before the tool recorded who named the file: judged by the name.
    for info in kept:
        document = json.loads(info.sidecar.read_text())
        del document["automatic_name"]
        info.sidecar.write_text(json.dumps(document))
    run_here("db", "backup", "--database-url", sqlite_url, env=env)
    names = sorted(path.name for path in folder.iterdir() if path.suffix == ".sqlite")
    assert len(names) == 2 and "mine.sqlite" in names


def _kill_midway(url: str, folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Back `url` up in a process that is killed once the copy has begun (its progress
    callback is the moment)."""
    marker = tmp_path / "copying"
    code = (
        "import sys, time; from pathlib import Path; from orchestrator.migrations import backup\n"
        "def hang(done, total):\n"
        "    Path(sys.argv[3]).write_text(str(done)); time.sleep(120)\n"
        "backup.create(sys.argv[1], backup_dir=Path(sys.argv[2]), progress=hang)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, url, str(folder), str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.kill()
    process.wait()
    return process


def test_a_backup_killed_midway_leaves_no_backup_and_the_next_one_cleans_up(at_head, db_url,
                                                                           tmp_path):
    folder = at_head.backup_dir
    _kill_midway(db_url, folder, tmp_path)
    left = sorted(folder.iterdir())
    # Only a hidden temporary file: nothing under a backup's name, nothing listed.
    assert left and all(path.name.startswith(".") and path.name.endswith(".partial")
                        for path in left)
    assert at_head.backups() == []
    info = at_head.backup()
    assert sorted(folder.iterdir()) == sorted([info.path, info.sidecar])


def test_a_backup_still_being_written_is_not_cleaned_up(sqlite_url, tmp_path):
    import fcntl

    folder = tmp_path / "b"
    folder.mkdir()
    busy = folder / ".orchestrator_test-0123456789ab.partial"
    with open(busy, "wb") as writing:  # another process's backup, in progress
        fcntl.flock(writing, fcntl.LOCK_EX)
        with MigrationManager(sqlite_url, backup_dir=folder) as manager:
            manager.upgrade("001")
            manager.backup()
        assert busy.exists()
    assert backup.remove_stale_partials(folder) == [busy] and not busy.exists()
    (folder / ".gone.partial").symlink_to(folder / "nowhere")  # removed as we look
    assert backup.remove_stale_partials(folder) == []


def test_restoring_a_backup_of_another_database_needs_other_database(tmp_path, run_here):
    folder = tmp_path / "b"
    ours, theirs = (f"sqlite:///{tmp_path / name}" for name in ("rel_f1.db", "rel_c8.db"))
    for url in (ours, theirs):
        MigrationManager(url).upgrade()
    seed_rows(ours)
    before = every_table(ours)
    other = MigrationManager(theirs, backup_dir=folder).backup()
    env = {"BACKUP_DIR": str(folder)}
    refused = run_here("db", "restore", str(other.path), "--yes", "--database-url", ours, env=env)
    assert refused.returncode == 2 and every_table(ours) == before
    assert refused.stderr == (
        f"Error: {other.path} is a backup of sqlite:///{tmp_path / 'rel_c8.db'}, not of "
        f"sqlite:///{tmp_path / 'rel_f1.db'}; pick a backup of this database (`orchestrator db "
        "backups`), or pass --other-database to replace this database's content with the "
        "other one's\n")
    done = run_here("db", "restore", str(other.path), "--yes", "--other-database",
                    "--database-url", ours, env=env)
    assert done.returncode == 0, done.stderr
    assert every_table(ours) == every_table(theirs)


def test_one_postgresql_database_whoever_connects():
    same = backup.same_database
    assert same("postgresql://app@db:5432/x", "postgresql://admin@db/x")
    assert not same("postgresql://app@db/x", "postgresql://app@db/y")
    assert not same("postgresql://app@db/x", "postgresql://app@other/x")
    assert not same("sqlite:///a.db", "sqlite:///b.db")
    assert not same("postgresql://app@db/x", "not a url")


def test_the_backup_restored_from_survives_the_retention(sqlite_url, tmp_path):
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b", backup_keep=1) as manager:
        manager.upgrade("001")
        old = manager.backup()
        manager.upgrade("002")
        newer = manager.backup()
        assert not old.path.exists()
        manager.restore(newer.path)  # the safety backup is now the newest: newer is spared
        assert newer.path.exists() and manager.get_current_revision() == "002"


def test_backing_up_a_sqlite_file_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(BackupError, match="nothing to back up: .*missing.db does not exist yet"):
        backup.create(f"sqlite:///{tmp_path / 'missing.db'}", backup_dir=tmp_path)


def test_an_existing_output_file_is_never_overwritten(sqlite_url, tmp_path):
    target = tmp_path / "taken.sqlite"
    target.write_text("precious")
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade("001")
        with pytest.raises(BackupError, match="already exists; choose another --output"):
            manager.backup(target)
    assert target.read_text() == "precious"


def test_an_unwritable_backup_folder_is_a_clear_error(sqlite_url, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    with MigrationManager(sqlite_url, backup_dir=blocker / "backups") as manager:
        manager.upgrade("001")
        with pytest.raises(BackupError, match="cannot create the backup folder .*BACKUP_DIR"):
            manager.backup()
        with pytest.raises(BackupError, match="cannot create the backup folder .*another --output"):
            manager.backup(blocker / "pre.sqlite")
    assert blocker.read_text() == "a file where the folder should be"


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_backup(sqlite_url, tmp_path,
                                                                  monkeypatch):
    """A full disk cannot be made here: the copy's write fails as it would on one."""
    import errno

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    folder = tmp_path / "backups"
    with MigrationManager(sqlite_url, backup_dir=folder) as manager:
        manager.upgrade("001")
        monkeypatch.setattr(os, "sendfile", disk_full)
        with pytest.raises(BackupError, match=r"cannot write the backup .*No space left on device; "
                                              r"set BACKUP_DIR"):
            manager.backup()
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("output", [False, True], ids=["backup folder", "--output"])
def test_a_read_only_folder_is_named_not_the_hidden_partial_file(sqlite_url, tmp_path,
                                                                  monkeypatch, output):
    """Root writes anywhere here: the partial file's creation fails as on a read-only folder."""
    import errno

    from orchestrator.migrations.backup import files

    def read_only(path, mode="r", *args, **kwargs):
        if "x" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open(path, mode, *args, **kwargs)

    folder = tmp_path / "backups"
    target = tmp_path / "out" / "pre.sqlite"
    with MigrationManager(sqlite_url, backup_dir=folder) as manager:
        manager.upgrade("001")
        monkeypatch.setattr(files, "open", read_only, raising=False)
        with pytest.raises(BackupError) as raised:
            manager.backup(target if output else None)
    where = target if output else folder
    assert str(raised.value).startswith(f"cannot write the backup {where}: Read-only file system; ")
    assert ".partial" not in str(raised.value)


def test_a_copy_that_comes_out_short_is_not_kept(sqlite_url, tmp_path, monkeypatch):
    """The file ended before the size read at the start (cut by hand mid-copy): sendfile
    reports the end early, as it then would."""
    real_sendfile = os.sendfile
    calls = []

    def cut_short(out, data, offset, count):
        calls.append(count)
        return real_sendfile(out, data, offset, count // 2) if len(calls) == 1 else 0

    folder = tmp_path / "backups"
    with MigrationManager(sqlite_url, backup_dir=folder) as manager:
        manager.upgrade("001")
        monkeypatch.setattr(os, "sendfile", cut_short)
        with pytest.raises(BackupError, match=r"the copy of the database came out incomplete "
                                              r"\(\d+ bytes, its header says \d+\); nothing was "
                                              r"kept: back up again"):
            manager.backup()
    assert list(folder.iterdir()) == []


def test_an_output_file_made_during_the_backup_is_not_overwritten(sqlite_url, tmp_path):
    target = tmp_path / "mine.sqlite"

    def someone_else_writes_it(done, total):
        target.write_text("someone else's")

    with MigrationManager(sqlite_url) as manager:
        manager.upgrade("001")
        with pytest.raises(BackupError, match="mine.sqlite already exists; choose another"):
            manager.backup(target, progress=someone_else_writes_it)
    assert target.read_text() == "someone else's"
    assert sorted(path.name for path in tmp_path.iterdir() if "partial" in path.name) == []


def test_an_interrupted_backup_leaves_no_partial_file(db_url, tmp_path):
    def interrupt(done, total):
        raise KeyboardInterrupt

    folder = tmp_path / "backups"
    with MigrationManager(db_url, backup_dir=folder) as manager:
        manager.upgrade("001")
        with pytest.raises(KeyboardInterrupt):
            manager.backup(progress=interrupt)
    assert list(folder.iterdir()) == []


# -- SQLite: consistent while the API writes --------------------------------------------------------


def test_sqlite_backup_holds_writers_off_while_it_copies(sqlite_url, tmp_path):
    path = sqlite_url.removeprefix("sqlite:///")
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        attempts = []

        def try_to_write(done, total):
            writer = sqlite3.connect(path, timeout=0)
            try:
                writer.execute("INSERT INTO agents (name, owner_id) VALUES ('sneaky', 1)")
                writer.commit()
                attempts.append("committed")
            except sqlite3.OperationalError as exc:
                attempts.append(str(exc))
            finally:
                writer.close()

        info = manager.backup(tmp_path / "copy.sqlite", progress=try_to_write)
    assert attempts == ["database is locked"]
    execute(sqlite_url, "INSERT INTO agents (name, owner_id) VALUES ('afterwards', 1)")  # released after
    copy = sqlite3.connect(info.path)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM agents").fetchone()[0] == 1
    copy.close()


_WRITER = """
import sqlite3, sys, pathlib, time
path, stop = sys.argv[1], pathlib.Path(sys.argv[2])
connection = sqlite3.connect(path, timeout=30, isolation_level=None)
batch = 0
while not stop.exists():
    batch += 1
    connection.execute("BEGIN IMMEDIATE")
    for i in range(50):
        connection.execute(
            "INSERT INTO tasks (project_id, title, description) VALUES (1, ?, ?)",
            (f"batch-{batch}", "x" * 500))
    connection.execute("COMMIT")
    time.sleep(0.002)  # an API's pace, not a bulk load's
print(batch)
"""


@pytest.mark.slow
def test_sqlite_backups_are_consistent_while_another_process_writes(sqlite_url, tmp_path):
    path = sqlite_url.removeprefix("sqlite:///")
    with MigrationManager(sqlite_url, backup_dir=tmp_path / "b", backup_keep=50) as manager:
        manager.upgrade()
        seed_rows(sqlite_url)
        stop = tmp_path / "stop"
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, path, str(stop)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            taken = []
            deadline = time.monotonic() + 30
            while len(taken) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
                taken.append(manager.backup())
        finally:
            stop.write_text("stop")
            batches = int(writer.communicate(timeout=30)[0])
    assert batches > 1 and len(taken) == 6
    for info in taken:
        copy = sqlite3.connect(info.path)
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sizes = copy.execute(
            "SELECT count(*) FROM tasks WHERE title LIKE 'batch-%' GROUP BY title").fetchall()
        # Every writer transaction is in the copy whole, or not at all.
        assert all(size == (50,) for size in sizes)
        copy.close()


def test_a_wal_database_is_copied_through_sqlite_with_its_unmerged_pages(sqlite_url, tmp_path):
    path = sqlite_url.removeprefix("sqlite:///")
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
    holder = sqlite3.connect(path)
    assert holder.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    holder.execute("INSERT INTO users (email, name) VALUES ('wal@example.com', 'In the WAL')")
    holder.commit()  # stays in the -wal file while this connection keeps it open
    try:
        with MigrationManager(sqlite_url) as manager:
            info = manager.backup(tmp_path / "wal-copy.sqlite")
        copy = sqlite3.connect(info.path)
        assert copy.execute("SELECT name FROM users").fetchall() == [("In the WAL",)]
        copy.close()
    finally:
        holder.close()


# -- PostgreSQL client tools ----------------------------------------------------------------------


@pytest.mark.postgres
def test_missing_client_tools_name_the_package(postgres_url, tmp_path, monkeypatch):
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade("001")
        info = manager.backup()
        empty = tmp_path / "empty-path"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
        with pytest.raises(BackupToolMissing, match="pg_dump is not installed .*postgresql-client"):
            manager.backup()
        with pytest.raises(BackupToolMissing, match="pg_restore is not installed .*postgresql-client"):
            manager.restore(info.path)
        # No upgrade goes ahead without the backup it was asked to take first.
        manager.backup_before_migrate = True
        with pytest.raises(BackupToolMissing) as refused:
            manager.upgrade()
        assert str(refused.value).endswith(
            "(no upgrade without the backup taken before it; to go without, set "
            "BACKUP_BEFORE_MIGRATE=false)")
        assert manager.get_current_revision() == "001"
        # With pg_dump alone, the restore still refuses before taking its safety backup.
        (empty / "pg_dump").symlink_to(shutil.which("pg_dump", path=os.defpath + ":/usr/bin"))
        with pytest.raises(BackupToolMissing, match="pg_restore is not installed"):
            manager.restore(info.path)
        assert [b.path for b in manager.backups()] == [info.path]


@pytest.mark.postgres
@pytest.mark.parametrize("given_as", ["user:password", "password parameter", "sslpassword too"])
def test_the_password_goes_through_the_environment_and_is_never_shown(postgres_url, tmp_path,
                                                                      run_here, given_as):
    parsed = make_url(postgres_url)
    if given_as == "user:password":
        parsed = parsed.set(password="s3cret-word")
    else:
        parsed = parsed.update_query_dict({"password": "s3cret-word"})
    if given_as == "sslpassword too":  # a libpq option with no environment variable
        parsed = parsed.update_query_dict({"sslpassword": "s3cret-key"})
    url = parsed.render_as_string(hide_password=False)
    secrets = ("s3cret-word", "s3cret-key")
    with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
    env = {"BACKUP_DIR": str(tmp_path / "b")}
    made = run_here("db", "backup", "--database-url", url, env=env)
    listed = run_here("db", "backups", "--json", "--database-url", url, env=env)
    status = run_here("db", "status", "--database-url", url, env=env)
    assert made.returncode == 0 and listed.returncode == 0, made.stderr + listed.stderr
    [info] = json.loads(listed.stdout)
    sidecar = Path(info["path"] + ".json").read_text()
    for shown in (made.stdout, made.stderr, listed.stdout, sidecar, status.stdout):
        assert not any(secret in shown for secret in secrets)
    assert info["database"] == make_url(postgres_url).set(drivername="postgresql").render_as_string()
    assert "password=***" in status.stdout or given_as == "user:password"

    # What `ps` would show of pg_dump and pg_restore while they run, and their environment
    # (where the password must be: this server trusts everyone, so it would not complain).
    seen: list[str] = []
    environments: list[bytes] = []

    def look_at_children(done, total):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    seen.append((stat.parent / "cmdline").read_bytes().decode())
                    if "pg_dump" in seen[-1]:  # the tool that connects
                        environments.append((stat.parent / "environ").read_bytes())
            except (OSError, ValueError):
                continue  # the process ended while we looked

    # pg_restore only turns the archive into SQL, which the restore's own session runs: it
    # connects nowhere, and gets no secret (it may end before /proc can be read: its arguments
    # and environment are taken as they are given).
    started: list[tuple[list[str], dict | None]] = []
    real_popen = subprocess.Popen

    def popen(args, *rest, **options):
        started.append((list(args), options.get("env")))
        return real_popen(args, *rest, **options)

    with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
        info = manager.backup(progress=look_at_children)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(subprocess, "Popen", popen)
            manager.restore(info.path, progress=look_at_children)
    # The archive read through first (no connection), then run.
    [(check_args, check_env), (restore_args, restore_env)] = [
        (a, e) for a, e in started if "pg_restore" in a[0] and "--list" not in a]
    assert check_args[1] == f"--file={os.devnull}" and check_env is None
    assert not any(secret in arg for arg in check_args for secret in secrets)
    assert restore_env is None and "PGPASSWORD" not in os.environ
    assert not any(secret in arg for arg in restore_args for secret in secrets)
    # The restore's safety dump, as it was started.
    [(dump_args, dump_env)] = [(a, e) for a, e in started if "pg_dump" in a[0]]
    assert not any(secret in arg for arg in dump_args for secret in secrets)
    assert dump_env["PGPASSWORD"] == "s3cret-word"
    assert any("pg_dump" in line for line in seen)
    assert not any(secret in line for line in seen for secret in secrets)
    assert environments and all(b"PGPASSWORD=s3cret-word\0" in env for env in environments)
    if given_as == "sslpassword too":  # in a service file readable by us only, gone afterwards
        assert all(b"PGSERVICEFILE=" in env for env in environments)
        assert not list(Path(tempfile.gettempdir()).glob("orchestrator-*.conf"))


@pytest.mark.postgres
def test_an_unreachable_server_is_a_clear_backup_error(tmp_path):
    url = "postgresql+psycopg://postgres:s3cret-word@127.0.0.1:1/nowhere"
    with pytest.raises(BackupError) as failure:
        backup.create(url, backup_dir=tmp_path)
    message = str(failure.value)
    assert message.startswith("cannot back up postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere")
    assert "s3cret-word" not in message


@pytest.mark.postgres
@pytest.mark.parametrize("secret_option", [
    {}, {"sslpassword": "s3cret-key", "application_name": "orchestrator-test"}])
def test_a_failing_pg_dump_leaves_no_partial_file(postgres_url, tmp_path, secret_option):
    """A role that may read the revision but not the data: pg_dump itself fails."""
    admin = create_engine(require_postgres(), isolation_level="AUTOCOMMIT")
    role = f"orch_limited_{uuid.uuid4().hex[:8]}"
    with MigrationManager(postgres_url) as manager:
        manager.upgrade("001")
    execute(postgres_url, f'CREATE ROLE "{role}" LOGIN',
            f'GRANT SELECT ON alembic_version TO "{role}"')
    try:
        limited = make_url(postgres_url).set(username=role, password="s3cret-word")
        url = limited.update_query_dict(secret_option).render_as_string(hide_password=False)
        with pytest.raises(BackupError) as failure:
            backup.create(url, backup_dir=tmp_path / "b", progress=lambda done, total: None)
        message = str(failure.value)
        assert message.startswith(f"pg_dump failed for postgresql+psycopg://{role}:***@")
        assert "permission denied" in message and "s3cret" not in message
        assert list((tmp_path / "b").iterdir()) == []
    finally:
        execute(postgres_url, f'REVOKE ALL ON alembic_version FROM "{role}"')
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


# -- the automatic backup, and restoring after a failed migration ---------------------------------


def test_upgrade_and_downgrade_take_a_backup_first_when_enabled(db_url, backups):
    with MigrationManager(db_url, backup_dir=backups, backup_before_migrate=True) as manager:
        manager.upgrade("001")
        assert manager.last_backup is None  # a fresh database has nothing to lose
        manager.upgrade("002")
        first = manager.last_backup
        assert (first.revision, first.reason) == ("001", "before-upgrade")
        manager.downgrade("001")
        second = manager.last_backup
        assert (second.revision, second.reason) == ("002", "before-downgrade")
        assert [b.path for b in manager.backups()] == [second.path, first.path]
    with MigrationManager(db_url, backup_dir=backups) as manager:
        manager.upgrade("002")
        assert manager.last_backup is None and len(manager.backups()) == 2


def test_settings_turn_the_automatic_backup_on_outside_development(sqlite_url, tmp_path):
    from orchestrator.settings import load_settings

    staging = MigrationManager.from_settings(
        load_settings(environment="staging", database_url=sqlite_url, backup_dir=tmp_path / "b",
                      backup_keep=3))
    assert (staging.backup_before_migrate, staging.environment, staging.backup_keep) == (
        True, "staging", 3)
    assert staging.backup_dir == tmp_path / "b"
    development = MigrationManager.from_settings(load_settings(database_url=sqlite_url))
    assert development.backup_before_migrate is False


_CHANGES_DATA = """
op.execute("UPDATE tasks SET title = 'rewritten by the step that works'")
op.create_table("step_work", sa.Column("id", sa.Integer(), primary_key=True))
"""
_FAILS = """
op.execute("DELETE FROM agents")
backups = os.environ.get("ORCH_TEST_DELETE_BACKUPS")
if backups:
    for leftover in Path(backups).iterdir():
        leftover.unlink()
raise RuntimeError("boom: unexpected data")
"""


def test_a_failed_migration_restores_sqlite_and_leaves_postgres_at_the_last_good_revision(
    db_url, tmp_path, backups
):
    scripts = copy_scripts(tmp_path)
    works = add_revision(scripts, _CHANGES_DATA, 'op.drop_table("step_work")')
    fails = add_revision(scripts, _FAILS)
    with MigrationManager(db_url, script_location=str(scripts), backup_dir=backups,
                          backup_before_migrate=True, lock_timeout=30) as manager:
        manager.upgrade("004")
        seed_rows(db_url)
        before, schema = app_tables(db_url), schema_snapshot(db_url)
        recorded = manager.applied_history()
        with pytest.raises(MigrationFailedError) as failure:
            manager.upgrade()
        message = str(failure.value)
        assert f"migration {fails} failed: RuntimeError: boom" in message
        taken = manager.last_backup
        assert taken.revision == "004" and str(taken.path) in message
        history = manager.applied_history()
        if manager.dialect == "sqlite":
            assert "was rolled back: the database is back at 004" in message
            assert manager.get_current_revision() == "004"
            assert app_tables(db_url) == before and schema_snapshot(db_url) == schema
        else:
            assert f"the database is at {works}" in message
            assert manager.get_current_revision() == works
            assert scalar(db_url, "SELECT count(*) FROM agents") == 1
            assert scalar(db_url, "SELECT min(title) FROM tasks") == "rewritten by the step that works"
        # The history shows what ran, the failed step included, whatever was restored.
        assert history[: len(recorded)] == recorded
        assert [(e.revision, e.success) for e in history[len(recorded):]] == [
            (works, True), (fails, False)]
        assert "RuntimeError: boom" in history[-1].error


def test_the_rollback_of_a_failed_sqlite_migration_needs_no_backup_file(
    sqlite_url, tmp_path, backups, monkeypatch
):
    """The backup is the operator's; putting the database back is the transaction's."""
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, _FAILS)
    monkeypatch.setenv("ORCH_TEST_DELETE_BACKUPS", str(backups))
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_dir=backups,
                          backup_before_migrate=True) as manager:
        manager.upgrade("004")
        seed_rows(sqlite_url)
        before = app_tables(sqlite_url)
        with pytest.raises(MigrationFailedError, match="the database is back at 004"):
            manager.upgrade()
        assert not manager.last_backup.path.exists()
        assert app_tables(sqlite_url) == before and manager.get_current_revision() == "004"


def test_a_failed_migration_without_a_backup_names_the_last_good_revision(sqlite_url, tmp_path):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, 'raise RuntimeError("nope")')
    with MigrationManager(sqlite_url, script_location=str(scripts), backup_before_migrate=False) as manager:
        manager.upgrade("004")
        with pytest.raises(MigrationFailedError, match="the database is at 004; fix the script"):
            manager.upgrade()


# -- the command line --------------------------------------------------------------------------------


def test_backup_commands_end_to_end(sqlite_url, run_here, run_cli, tmp_path):
    env = {"BACKUP_DIR": str(tmp_path / "b")}
    none = run_here("db", "backups", "--database-url", sqlite_url, env=env)
    assert none.returncode == 0 and "No backups of" in none.stdout
    MigrationManager(sqlite_url).upgrade()
    seed_rows(sqlite_url)
    before = every_table(sqlite_url)
    # A real process, to see what it prints when no terminal is attached: no progress bar.
    made = run_cli("db", "backup", "--database-url", sqlite_url, env=env, input="")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("Backed up sqlite:///") and "at revision 006 to" in made.stdout
    assert made.stderr == ""
    listed = run_here("db", "backups", "--database-url", sqlite_url, env=env)
    [line] = listed.stdout.splitlines()
    path = line.split()[-1]
    assert " 006 " in line and "manual" in line

    execute(sqlite_url, "DELETE FROM tasks")
    refused = run_cli("db", "restore", path, "--database-url", sqlite_url, env=env, input="")
    assert refused.returncode == 2
    assert "Error: refusing to restore without confirmation" in refused.stderr
    not_a_backup = run_here("db", "restore", str(Path(path).with_suffix(".sqlite.json")), "--yes",
                            "--database-url", sqlite_url, env=env)
    assert not_a_backup.returncode == 2 and "neither a SQLite database" in not_a_backup.stderr
    restored = run_here("db", "restore", path, "--yes", "--database-url", sqlite_url, env=env)
    assert restored.returncode == 0, restored.stderr
    assert "Saved the state it replaced to" in restored.stdout
    assert "Restored; the database is at 006." in restored.stdout
    assert every_table(sqlite_url) == before


def test_upgrade_command_in_staging_says_where_the_backup_went(sqlite_url, run_here, tmp_path):
    MigrationManager(sqlite_url).upgrade("002")
    done = run_here("db", "upgrade", "--env", "staging", "--database-url", sqlite_url,
                   env={"BACKUP_DIR": str(tmp_path / "b")})
    assert done.returncode == 0, done.stderr
    assert "Backed up first, at 002: " in done.stdout
    undone = run_here("db", "downgrade", "003", "--env", "staging", "--database-url", sqlite_url,
                     env={"BACKUP_DIR": str(tmp_path / "b")})
    assert "Backed up first, at 006: " in undone.stdout


def test_restore_command_names_a_file_without_sidecar(sqlite_url, run_here, tmp_path):
    MigrationManager(sqlite_url).upgrade("001")
    copy = _sqlite_file(tmp_path / "bare.sqlite")
    shown = run_here("db", "restore", str(copy), "--yes", "--database-url", sqlite_url,
                    env={"BACKUP_DIR": str(tmp_path / "b")})
    assert shown.returncode == 0, shown.stderr
    assert "(no sidecar: revision unknown)" in shown.stdout
    # Tables without a revision: not "at base", which `db upgrade` would build over.
    assert "Restored; the database has tables but no migration revision" in shown.stdout
    assert "`orchestrator db stamp <revision>`" in shown.stdout


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch):
    import pty

    from orchestrator.cli.progress import ProgressBar

    quiet = ProgressBar("Copying", delay=0)
    quiet(1, 2)  # pytest's stderr is no terminal
    assert quiet._bar is None
    leader, follower = pty.openpty()
    terminal = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    waiting = ProgressBar("Copying", delay=60)
    waiting(1, 2)
    assert waiting._bar is None  # not long enough yet
    bar = ProgressBar("Copying", delay=0)
    bar(10, 100)
    bar(100, 100)
    assert bar._bar is not None
    bar.close()
    bar.close()
    terminal.flush()
    shown = os.read(leader, 65536).decode(errors="replace")
    terminal.close()
    os.close(leader)
    assert "Copying" in shown
