"""PostgreSQL: from its safety dump to its end, a restore lets no other session commit, whatever
that session says about read-only transactions. One session of the restore locks every table
(others read, nobody else writes), the safety dump is taken at its snapshot and the restore runs
in its one transaction; sessions there at the start, and any in its way, are ended (or waited
for, where this role may not end them). Nothing is left behind, even when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager, backup
from orchestrator.migrations.backup import BackupError, NotABackupError
from orchestrator.migrations.scratch import scratch_database
from tests.conftest import require_postgres
from tests.fixtures import Writer
from tests.schema import content_hash, execute, scalar, seed_rows
from tests.migrations.test_backup import writer_rows, writer_rows_in_backup

pytestmark = pytest.mark.postgres

_SETTINGS = ("SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '') "
             "FROM pg_db_role_setting WHERE setdatabase = "
             "(SELECT oid FROM pg_database WHERE datname = current_database())")


# The restore's sessions in the test's own database (other tests run restores beside it).
RESTORE_SESSIONS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'orchestrator-restore %'")


def new_sessions_read_only(url: str) -> str:
    return scalar(url, "SHOW default_transaction_read_only")


@pytest.fixture
def owned_by_a_role(tmp_path) -> Iterator[tuple[str, str]]:
    """(URL of a database at head with rows, owned by and connecting as a role that is not a
    superuser; the superuser's URL of the same database)."""
    admin_url = require_postgres()
    role = f"orch_owner_{uuid.uuid4().hex[:10]}"
    execute(admin_url, f'CREATE ROLE "{role}" LOGIN')
    try:
        with scratch_database(admin_url, "orch_test", owner=role) as superuser_url:
            url = make_url(superuser_url).set(username=role).render_as_string(
                hide_password=False)
            with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
                manager.upgrade()
            seed_rows(url)
            yield url, superuser_url
    finally:
        execute(admin_url, f'DROP ROLE IF EXISTS "{role}"')


def test_a_role_that_may_not_lock_the_tables_is_refused_before_anything(owned_by_a_role,
                                                                         tmp_path):
    url, superuser_url = owned_by_a_role
    info = MigrationManager(url, backup_dir=tmp_path / "b").backup()
    other = f"orch_reader_{uuid.uuid4().hex[:8]}"
    execute(superuser_url, f'CREATE ROLE "{other}" LOGIN',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{other}"')
    try:
        as_other = make_url(url).set(username=other).render_as_string(hide_password=False)
        with MigrationManager(as_other, backup_dir=tmp_path / "b") as manager:
            with pytest.raises(BackupError, match=r"locking its tables for the restore's "
                                                  r"duration failed \(permission denied for "
                                                  r"table .*\); restore as the database's owner "
                                                  r"or a superuser, with the server running$"):
                manager.restore(info.path)
        assert [b.path for b in MigrationManager(url, backup_dir=tmp_path / "b").backups()] == [
            info.path]  # no safety backup either: refused first
    finally:
        execute(superuser_url, f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{other}"',
                f'DROP ROLE "{other}"')


def test_a_writer_that_opts_out_of_read_only_loses_no_commit(at_head_with_rows, tmp_path):
    """The hole an operator's trial found: new sessions were read-only by default, but a
    session that said `SET default_transaction_read_only = off` / `BEGIN READ WRITE` committed
    between the safety dump and the restore, and those rows were in neither. Every row the
    writer was told was committed must be in the safety backup or in the restored database."""
    manager, url = at_head_with_rows
    target = manager.backup()
    said: list[str] = []
    manager.notify = said.append
    with Writer(url, tmp_path, opt_out=True) as writer:
        writer.wait_for(50)
        report = manager.restore(target.path)
        writer.wait_for(50)  # and it writes into the restored database
        acknowledged = set(writer.stop())
    kept, restored = writer_rows_in_backup(report.safety_backup), writer_rows(url)
    assert kept and restored and not kept & restored
    assert acknowledged - kept - restored == set()
    assert any(line.startswith("ending 1 other session of the database (") for line in said)
    # Nothing of the restore outlives it: no setting, no session.
    assert scalar(url, _SETTINGS) == "" and new_sessions_read_only(url) == "off"
    assert scalar(url, RESTORE_SESSIONS) == 0


@pytest.fixture
def at_head_with_rows(postgres_url, tmp_path):
    """A database at head with 100,000 tasks: its dump and restore take a while."""
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        execute(postgres_url, "INSERT INTO tasks (project_id, title, description) "
                              "SELECT 1, 'bulk ' || i, md5(i::text) "
                              "FROM generate_series(1, 100000) AS i")
        yield manager, postgres_url


def test_a_session_in_the_way_that_this_role_may_not_end_is_waited_for_then_the_restore_gives_up(
    owned_by_a_role, tmp_path, monkeypatch
):
    url, superuser_url = owned_by_a_role
    monkeypatch.setattr("orchestrator.migrations.backup.limits.BUSY_TIMEOUT", 1.0)
    said: list[str] = []
    with MigrationManager(url, backup_dir=tmp_path / "b", notify=said.append) as manager:
        info = manager.backup()
        execute(url, "INSERT INTO agents (name, owner_id) VALUES ('after the backup', 1)")
        before = content_hash(url)
        superuser = create_engine(superuser_url, poolclass=NullPool)
        try:
            # A superuser's write, not committed yet: not ours to end, and in the way.
            with superuser.connect() as session:
                pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                session.execute(text(
                    "INSERT INTO agents (name, owner_id) VALUES ('the superuser', 1)"))
                with pytest.raises(BackupError, match=rf"^.* pid {pid} held a lock the restore "
                                                      rf"needs for more than 1s \(another role's "
                                                      rf"session, which this one may not end\); "
                                                      rf"stop it \(or the API\), or restore as a "
                                                      rf"superuser, then restore again$"):
                    manager.restore(info.path)
                session.commit()  # it was kept waiting, never refused
        finally:
            superuser.dispose()
        assert any(line.startswith("waiting for ") and f"pid {pid}" in line for line in said)
        assert [b.path for b in manager.backups()] == [info.path]  # it gave up before the dump
    after = content_hash(url)
    assert after["agents"][0] == before["agents"][0] + 1
    assert scalar(url, "SELECT count(*) FROM agents WHERE name = 'after the backup'") == 1


def test_the_restore_goes_on_once_that_session_has_left_and_touches_no_setting(
    owned_by_a_role, tmp_path
):
    url, superuser_url = owned_by_a_role
    name = make_url(url).database
    execute(superuser_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
    said: list[str] = []
    superuser = create_engine(superuser_url, poolclass=NullPool)
    session = superuser.connect()
    leaving = threading.Timer(0.5, session.close)

    def told(line: str) -> None:
        said.append(line)
        if line.startswith("waiting for "):
            leaving.start()  # it leaves once the restore waits for it

    with MigrationManager(url, backup_dir=tmp_path / "b", notify=told) as manager:
        info = manager.backup()
        execute(url, "INSERT INTO agents (name, owner_id) VALUES ('after the backup', 1)")
        # A reader in an open transaction: the restore may lock the tables against writers
        # beside it, but cannot drop them until it has gone.
        session.execute(text("SELECT count(*) FROM agents"))
        try:
            report = manager.restore(info.path)
        finally:
            if leaving.is_alive():
                leaving.join()
            session.close()
            superuser.dispose()
    assert report.safety_backup is not None and report.revision == info.revision
    assert scalar(url, "SELECT count(*) FROM agents WHERE name = 'after the backup'") == 0
    assert any(line.startswith("waiting for ") for line in said)
    assert scalar(url, _SETTINGS) == "default_transaction_read_only=off"


def test_when_the_restore_loses_its_session_nothing_is_restored_and_nothing_is_left(
    postgres_url, tmp_path
):
    """The restore's own session is lost (a server restart, a network cut, an operator's
    pg_terminate_backend) midway: its transaction is rolled back, the database is as it was."""
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        info = manager.backup()
        execute(postgres_url, "INSERT INTO agents (name, owner_id) VALUES ('after the backup', 1)")
        before = content_hash(postgres_url)
        admin = create_engine(require_postgres(), isolation_level="AUTOCOMMIT")

        def cut_the_restore_session(done, total):
            with admin.connect() as connection:
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'orchestrator-restore %' AND datname = :name"),
                    {"name": make_url(postgres_url).database})

        try:
            with pytest.raises(BackupError, match=r"^the restore failed for .*: terminating "
                                                  r"connection due to administrator command; "
                                                  r"nothing was restored: the database is as it "
                                                  r"was \(its state before the restore is also "
                                                  r"in .*before-restore\.dump\)$"):
                manager.restore(info.path, progress=cut_the_restore_session)
        finally:
            admin.dispose()
        assert content_hash(postgres_url) == before
        assert not manager.status().read_only


def test_a_restore_killed_midway_leaves_the_database_as_it_was_and_writable(
    at_head_with_rows, tmp_path
):
    """kill -9 of the tool: its session ends with it, and its transaction is rolled back."""
    manager, url = at_head_with_rows
    target = manager.backup()
    execute(url, "DELETE FROM tasks WHERE id > 50000")
    before = content_hash(url)
    restoring = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "db", "restore", "--yes", str(target.path)],
        env={**os.environ, "DATABASE_URL": url, "BACKUP_DIR": str(tmp_path / "b")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Once it runs the archive (COPY), mid-restore.
        for _ in range(600):
            try:
                if scalar(url, RESTORE_SESSIONS + " AND query LIKE 'COPY %'"):
                    break
            except OperationalError:  # this poll was open as the restore ended sessions
                pass
            time.sleep(0.05)
        else:
            pytest.fail("the restore never reached its COPY")
    finally:
        os.killpg(restoring.pid, signal.SIGKILL)
        restoring.wait()
    for _ in range(200):  # the server notices the session's end
        if not scalar(url, RESTORE_SESSIONS):
            break
        time.sleep(0.05)
    assert content_hash(url) == before
    execute(url, "INSERT INTO agents (name, owner_id) VALUES ('writable', 1)")
    status = MigrationManager(url).status()
    assert status.up_to_date and not status.read_only


def test_a_database_left_read_only_by_hand_is_shown_and_left_so(postgres_url, tmp_path):
    """Earlier versions made new sessions read-only during a restore, and left them so when
    killed; `db status` still says so, with the statement that undoes it, and a restore leaves
    such a setting alone."""
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        info = manager.backup()
    name = make_url(postgres_url).database
    execute(postgres_url, f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    command = (f"BEGIN READ WRITE; ALTER DATABASE {name} RESET "
               "default_transaction_read_only; COMMIT")
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        assert manager.status().read_only and manager.make_writable_statement() == command
        manager.restore(info.path)
        assert manager.status().read_only
    subprocess.run(["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", command,
                    make_url(postgres_url).set(drivername="postgresql").render_as_string(
                        hide_password=False)], check=True, capture_output=True)
    assert new_sessions_read_only(postgres_url) == "off"
    assert not MigrationManager(postgres_url).status().read_only


def test_a_restored_database_with_tables_and_no_revision_says_so(postgres_url, tmp_path):
    execute(postgres_url, "CREATE TABLE legacy (id integer)", "INSERT INTO legacy VALUES (1)")
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        legacy = manager.backup()
        execute(postgres_url, "DROP TABLE legacy")
        manager.upgrade()
        report = manager.restore(legacy.path)
    assert report.unversioned and report.revision is None
    assert scalar(postgres_url, "SELECT count(*) FROM legacy") == 1
    # Restored again, over a database with no version table: its safety dump has no revision.
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        again = manager.restore(legacy.path)
    assert again.safety_backup.revision is None and again.unversioned


def test_an_archive_cut_short_is_refused_before_any_session_is_ended(postgres_url, tmp_path):
    """Its table of contents reads, its last data block does not: it is refused before the
    window opens, as a damaged SQLite backup is (an operator's trial: a truncated archive of
    1,000,000 tasks ended every session, locked every table and took a 9 s safety dump, only
    then to fail)."""
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        cut = tmp_path / "cut.dump"
        cut.write_bytes(manager.backup(output=tmp_path / "whole.dump").path.read_bytes()[:-5])
        engine = create_engine(postgres_url, poolclass=NullPool)
        try:
            with engine.connect() as bystander:
                with pytest.raises(NotABackupError, match=r"^pg_restore failed for .*: "
                                   r"could not read from input file: end of file; pick another "
                                   r"backup$"):
                    manager.restore(cut)
                assert bystander.execute(text("SELECT 1")).scalar() == 1  # not ended
        finally:
            engine.dispose()
    assert list((tmp_path / "b").glob("*before-restore*")) == []


def test_an_archive_cut_short_after_its_check_fails_midway_and_changes_nothing(postgres_url,
                                                                               tmp_path):
    """Cut after it was checked (`checked=`): the restore fails after it has dropped and made
    tables, in its transaction, which is rolled back."""
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        info = manager.backup()
        checked = backup.restorable(postgres_url, info.path)
        info.path.write_bytes(info.path.read_bytes()[:-5])
        execute(postgres_url, "INSERT INTO agents (name, owner_id) VALUES ('after the backup', 1)")
        before = content_hash(postgres_url)
        with pytest.raises(BackupError, match=r"^pg_restore failed for .*: pg_restore: error: "
                                              r"could not read from input file: end of file; "
                                              r"nothing was restored: the database is as it was"):
            backup.restore(postgres_url, info.path, checked=checked, safety_dir=tmp_path / "s")
    assert content_hash(postgres_url) == before


def test_a_restore_that_cannot_open_its_sessions_changes_nothing(owned_by_a_role, tmp_path):
    url, superuser_url = owned_by_a_role
    role = make_url(url).username
    info = MigrationManager(url, backup_dir=tmp_path / "b").backup()
    # The migration lock's session and the restore's first one fit; its watcher does not.
    execute(superuser_url, f'ALTER ROLE "{role}" CONNECTION LIMIT 2')
    with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
        with pytest.raises(BackupError, match=r"^cannot restore .*: .*too many connections for "
                                              r"role .*; check DATABASE_URL and that the server "
                                              r"is running$"):
            manager.restore(info.path)
    assert [b.path for b in MigrationManager(url, backup_dir=tmp_path / "b").backups()] == [
        info.path]


def test_a_table_made_while_the_restore_waits_for_its_locks_is_locked_and_kept(
    owned_by_a_role, tmp_path
):
    """The tables are listed, then locked: one made in between is found once the snapshot is
    taken, and the locks are taken again with it, so that the safety dump holds its rows and
    nobody can add any afterwards."""
    url, superuser_url = owned_by_a_role
    with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
        info = manager.backup()
        superuser = create_engine(superuser_url, poolclass=NullPool)
        reports: list = []
        try:
            with superuser.connect() as session:
                # A superuser's write in progress: the restore's locks wait for it.
                session.execute(text(
                    "INSERT INTO agents (name, owner_id) VALUES ('the superuser', 1)"))
                restoring = threading.Thread(
                    target=lambda: reports.append(manager.restore(info.path)))
                restoring.start()
                for _ in range(600):
                    try:
                        if scalar(url, RESTORE_SESSIONS + " AND wait_event_type = 'Lock'"):
                            break
                    except OperationalError:  # this poll was open as the restore ended sessions
                        pass
                    time.sleep(0.05)
                execute(url, "CREATE TABLE made_meanwhile (note text)",
                        "INSERT INTO made_meanwhile VALUES ('kept')")
                session.commit()
                restoring.join()
        finally:
            superuser.dispose()
    [report] = reports
    kept = subprocess.run(["pg_restore", "--data-only", "--file=-",
                           str(report.safety_backup.path)], capture_output=True, text=True,
                          check=True).stdout
    assert "kept" in kept and "the superuser" in kept
    assert scalar(url, "SELECT to_regclass('made_meanwhile')") is None  # not in the backup
