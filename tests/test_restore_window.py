"""PostgreSQL: from its safety dump to its end, a restore lets no other session commit. New
sessions are read-only, the ones there are ended (or waited for, where this role may not end
them), and afterwards the database is as writable as before, even when something went wrong."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager, backup
from orchestrator.migrations.backup import BackupError
from tests.conftest import require_postgres
from tests.schema import execute, scalar, seed_rows

pytestmark = pytest.mark.postgres

_SETTINGS = ("SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '') "
             "FROM pg_db_role_setting WHERE setdatabase = "
             "(SELECT oid FROM pg_database WHERE datname = current_database())")


def new_sessions_read_only(url: str) -> str:
    return scalar(url, "SHOW default_transaction_read_only")


@pytest.fixture
def owned_by_a_role(tmp_path) -> Iterator[tuple[str, str]]:
    """(URL of a database at head with rows, owned by and connecting as a role that is not a
    superuser; the superuser's URL of the same database)."""
    admin_url = require_postgres()
    role, name = (f"orch_{kind}_{uuid.uuid4().hex[:10]}" for kind in ("owner", "test"))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER "{role}"')
    url = make_url(admin_url).set(username=role, database=name).render_as_string(
        hide_password=False)
    try:
        with MigrationManager(url, backup_dir=tmp_path / "b") as manager:
            manager.upgrade()
        seed_rows(url)
        yield url, make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_a_role_that_may_not_make_the_database_read_only_is_refused_before_anything(
    owned_by_a_role, tmp_path
):
    url, superuser_url = owned_by_a_role
    info = MigrationManager(url, backup_dir=tmp_path / "b").backup()
    other = f"orch_reader_{uuid.uuid4().hex[:8]}"
    execute(superuser_url, f'CREATE ROLE "{other}" LOGIN',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{other}"')
    try:
        as_other = make_url(url).set(username=other).render_as_string(hide_password=False)
        with MigrationManager(as_other, backup_dir=tmp_path / "b") as manager:
            with pytest.raises(BackupError, match=r"making its new sessions read-only for the "
                                                  r"restore's duration failed \(.*must be owner "
                                                  r"of database.*\); restore as the database's "
                                                  r"owner or a superuser"):
                manager.restore(info.path)
        assert [b.path for b in MigrationManager(url, backup_dir=tmp_path / "b").backups()] == [
            info.path]  # no safety backup either: refused first
    finally:
        execute(superuser_url, f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{other}"',
                f'DROP ROLE "{other}"')


def test_a_session_this_role_may_not_end_is_waited_for_then_the_restore_gives_up(
    owned_by_a_role, tmp_path, monkeypatch
):
    url, superuser_url = owned_by_a_role
    monkeypatch.setattr(backup, "_BUSY_TIMEOUT", 1.0)
    said: list[str] = []
    with MigrationManager(url, backup_dir=tmp_path / "b", notify=said.append) as manager:
        info = manager.backup()
        execute(url, "INSERT INTO agents (name, owner_id) VALUES ('after the backup', 1)")
        superuser = create_engine(superuser_url, poolclass=NullPool)
        try:
            with superuser.connect() as session:  # a superuser's session: not ours to end
                pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                with pytest.raises(BackupError, match=rf"^1 session of another role stayed "
                                                      rf"connected for more than 1s \(.* pid {pid}\);"
                                                      rf" stop them \(or the API\), or restore as "
                                                      rf"a superuser, then restore again$"):
                    manager.restore(info.path)
        finally:
            superuser.dispose()
        assert any(line.startswith("waiting for ") and f"pid {pid}" in line for line in said)
        assert scalar(url, "SELECT count(*) FROM agents WHERE name = 'after the backup'") == 1
        assert new_sessions_read_only(url) == "off" and scalar(url, _SETTINGS) == ""


def test_the_restore_goes_on_once_that_session_has_left_and_keeps_a_setting_made_on_purpose(
    owned_by_a_role, tmp_path
):
    url, superuser_url = owned_by_a_role
    name = make_url(url).database
    execute(superuser_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
    said: list[str] = []
    with MigrationManager(url, backup_dir=tmp_path / "b", notify=said.append) as manager:
        info = manager.backup()
        execute(url, "INSERT INTO agents (name, owner_id) VALUES ('after the backup', 1)")
        superuser = create_engine(superuser_url, poolclass=NullPool)
        session = superuser.connect()
        session.execute(text("SELECT 1"))
        leaving = threading.Timer(1.0, session.close)
        leaving.start()
        try:
            report = manager.restore(info.path)
        finally:
            leaving.join()
            superuser.dispose()
    assert report.safety_backup is not None and report.revision == info.revision
    assert scalar(url, "SELECT count(*) FROM agents WHERE name = 'after the backup'") == 0
    assert any(line.startswith("waiting for ") for line in said)
    assert scalar(url, _SETTINGS) == "default_transaction_read_only=off"


def test_when_the_window_cannot_be_closed_the_error_gives_the_command_that_does(
    postgres_url, tmp_path
):
    """The restore's own session is lost (a server restart, a network cut) before it could
    make the database writable again: the error says so and how to do it."""
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        manager.upgrade()
        seed_rows(postgres_url)
        info = manager.backup()
        admin = create_engine(require_postgres(), isolation_level="AUTOCOMMIT")

        def cut_the_restore_session(done, total):
            with admin.connect() as connection:
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'orchestrator-restore %'"))

        name = make_url(postgres_url).database
        try:
            with pytest.raises(BackupError) as failure:
                manager.restore(info.path, progress=cut_the_restore_session)
        finally:
            admin.dispose()
    command = (f"BEGIN READ WRITE; ALTER DATABASE {name} RESET "
               "default_transaction_read_only; COMMIT")
    assert str(failure.value).startswith("the restore ended, but new sessions of the database "
                                         "are still read-only (")
    assert str(failure.value).endswith(f"): run `{command}` as its owner")
    assert new_sessions_read_only(postgres_url) == "on"
    # Until then `db status` says so, and a restore keeps it so, saying why.
    with MigrationManager(postgres_url, backup_dir=tmp_path / "b") as manager:
        assert manager.status().read_only and manager.make_writable_statement() == command
        said: list[str] = []
        manager.notify = said.append
        manager.restore(info.path)
        assert manager.status().read_only
    assert said[0] == ("new sessions of the database were read-only before this restore, and "
                       "will be after it; if that is left from a restore that was killed, run "
                       f"`{command}` as its owner afterwards")
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
