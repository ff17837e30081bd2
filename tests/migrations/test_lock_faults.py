"""Exactly once when the database side fails: the lock's session ended, idle timeouts, the
migration's own connection ended, a server restart, a SQLite lock file removed.

Each fault is real: sessions are ended with `pg_terminate_backend` (only sessions these tests
started), timeouts are set on the test's own scratch database. The server restart is opt-in
(ORCHESTRATOR_TEST_RESTART_SERVER=1): it ends every session on the server, other people's too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine
from orchestrator.migrations import (
    ConnectionLostError,
    MigrationLockLost,
    MigrationLockTimeout,
    MigrationManager,
    TransientDatabaseError,
    lock,
)
from tests.fixtures import add_revision, cli_argv, copy_scripts, revisions_after
from tests.migrations.test_lock import migrate_without_the_lock, orchestrator
from tests.migrations.test_schema import TASK_INDEXES
from tests.schema import seed_rows, snapshot

# Long enough that no step of these tests gives up on a table lock while a fault is arranged.
_PATIENT = {"DB_LOCK_TIMEOUT": "120s"}
_ADVISORY_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = {key} "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_BUILDING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    # 003 building an index, or dropping an INVALID one left by an earlier attempt.
    r"AND query ~ '^\s*(CREATE|DROP) INDEX CONCURRENTLY' AND state = 'active'"
)


def upgrade(url: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return orchestrator("db", "upgrade", *args, "--database-url", url,
                        env={**_PATIENT, **(env or {})})


def query(url: str, statement: str):
    """The first column of the first row, on a connection of its own (none is left idle)."""
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            result = connection.execute(text(statement))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def wait_for(found: Callable[[], object], what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + 60
    while not (value := found()):
        if process is not None:
            assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
    return value


def at_002_with_tasks(url: str) -> None:
    MigrationManager(url).upgrade("002")
    seed_rows(url)


@contextlib.contextmanager
def writer_in_the_way(url: str) -> Iterator:
    """A transaction that wrote to `tasks` and stays open: `CREATE INDEX CONCURRENTLY` (003)
    waits for it to end, which makes 003 take as long as the test needs."""
    engine = create_engine(url, poolclass=NullPool)
    connection = engine.connect()
    connection.execute(text("INSERT INTO tasks (project_id, title) VALUES (1, 'in the way')"))
    try:
        yield connection
    finally:
        # A server restart ended it already: nothing left to roll back.
        with contextlib.suppress(OperationalError):
            connection.rollback()
        connection.close()
        engine.dispose()


def assert_applied_exactly_once(url: str, allowed_failures: tuple[str, ...] = ()) -> None:
    """At head; one successful upgrade row per revision; only the failures expected; every
    index there and valid."""
    with MigrationManager(url) as manager:
        assert manager.status().up_to_date
        entries = manager.applied_history()
        chain = [info.revision for info in manager.history()]
    successes = Counter(e.revision for e in entries if e.success and e.direction == "upgrade")
    assert successes == dict.fromkeys(chain, 1), entries
    failures = [e.error for e in entries if not e.success]
    assert len(failures) == len(allowed_failures), failures
    for error, expected in zip(failures, allowed_failures, strict=True):
        assert error.startswith(expected), failures
    if url.startswith("postgresql"):
        assert query(url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    indexes = {name: cols for name, cols, _ in snapshot(url)["tasks"]["indexes"]}
    assert indexes == TASK_INDEXES


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


# -- PostgreSQL: the lock's own session ----------------------------------------------------


@pytest.mark.postgres
def test_lock_session_ended_mid_003_stops_the_migrator_and_a_second_one_completes(postgres_url):
    """A DBA (a pooler, a failover) ends the session holding the advisory lock while 003 builds
    its indexes, and a second migrator starts at once: the first stops without committing 003,
    the second waits for its last statement to end, then applies 003 and 004 once."""
    at_002_with_tasks(postgres_url)
    with writer_in_the_way(postgres_url) as writer:
        first = upgrade(postgres_url)
        wait_for(lambda: query(postgres_url, _BUILDING), "003 building an index", first)
        holder = query(postgres_url, _ADVISORY_HOLDER.format(key=lock.ADVISORY_LOCK_KEY))
        assert query(postgres_url, f"SELECT pg_terminate_backend({holder})")
        second = upgrade(postgres_url)
        assert first.wait(timeout=60) == lock.MigrationLockLost.exit_code == 4
        _, err = first.communicate()
        line = one_error_line(err)
        assert line.startswith("Error: lost the migration lock (its session ended: ")
        assert "during 003" in line and "the database is at 002" in line
        assert "run `orchestrator db upgrade` again" in line and "fix the script" not in line
        writer.rollback()  # 003 may now build its indexes (the second migrator's)
    assert second.wait(timeout=120) == 0, second.communicate()
    out, err = second.communicate()
    assert "Applied 003, 004" in out, (out, err)
    # The first's start of 003 stays recorded as what happened to it: interrupted.
    assert_applied_exactly_once(postgres_url, allowed_failures=("interrupted",))


@pytest.mark.postgres
def test_an_idle_session_timeout_does_not_end_the_lock_of_a_long_migration(postgres_url):
    """A managed server's idle_session_timeout (300 ms here, on this test's database only)
    would end the lock's session, idle while the migration runs: it is turned off for it, and
    a second migrator started midway waits, then finds nothing to do."""
    at_002_with_tasks(postgres_url)
    name = make_url(postgres_url).database
    query(postgres_url, f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '300ms'")
    with writer_in_the_way(postgres_url) as writer:
        first = upgrade(postgres_url)
        wait_for(lambda: query(postgres_url, _BUILDING), "003 building an index", first)
        second = upgrade(postgres_url)
        assert "waiting for the migration lock" in second.stderr.readline()
        # Several timeouts' worth of idleness for both lock sessions (the holder's and the
        # waiter's), then the lock is still where it was.
        holder = query(postgres_url, _ADVISORY_HOLDER.format(key=lock.ADVISORY_LOCK_KEY))
        time.sleep(1.5)
        assert query(postgres_url, _ADVISORY_HOLDER.format(key=lock.ADVISORY_LOCK_KEY)) == holder
        writer.rollback()
    assert first.wait(timeout=120) == 0, first.communicate()
    assert "Applied 003, 004" in first.communicate()[0]
    assert second.wait(timeout=60) == 0, second.communicate()
    assert "another migrator already did it" in second.communicate()[0]
    assert_applied_exactly_once(postgres_url)


# -- PostgreSQL: the migration's own connection ---------------------------------------------


def in_background(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)  # a failure must not hang pytest
    thread.start()
    return thread


def end_session(url: str, which: str) -> Callable[[], None]:
    """Ends the session that `which` finds, once it finds one."""
    def work() -> None:
        pid = wait_for(lambda: query(url, which), which)
        assert query(url, f"SELECT pg_terminate_backend({pid})")
    return work


@pytest.mark.postgres
def test_lock_session_ended_stops_the_running_statement_and_commits_nothing(postgres_url):
    """The same fault seen from inside: the watch finds the session gone, cancels the index
    build, and nothing more is committed."""
    at_002_with_tasks(postgres_url)
    holder = _ADVISORY_HOLDER.format(key=lock.ADVISORY_LOCK_KEY)
    with writer_in_the_way(postgres_url):
        ender = in_background(lambda: (wait_for(lambda: query(postgres_url, _BUILDING), "003"),
                                       end_session(postgres_url, holder)()))
        with MigrationManager(postgres_url, db_lock_timeout="120s") as manager:
            with pytest.raises(MigrationLockLost) as raised:
                manager.upgrade()
        ender.join(30)
        # Cancelled: no index build of ours is left running.
        assert not query(postgres_url, _BUILDING)
    assert raised.value.exit_code == 4
    assert str(raised.value).startswith("lost the migration lock (its session ended: ")
    assert "during 003" in str(raised.value) and "the database is at 002" in str(raised.value)
    with MigrationManager(postgres_url) as manager:
        assert manager.get_current_revision() == "002"
        last = manager.applied_history()[-1]
        assert (last.revision, last.error) == ("003", "interrupted")
        assert manager.upgrade() == revisions_after("002")
    assert_applied_exactly_once(postgres_url, allowed_failures=("interrupted",))


@pytest.mark.postgres
def test_the_migrations_own_connection_ended_mid_003_is_named_exit_3(postgres_url):
    """pg_terminate_backend of the session running 003: exit 3 naming 003 and what an
    autocommit step may leave, the attempt recorded, and the rerun completes it."""
    at_002_with_tasks(postgres_url)
    with writer_in_the_way(postgres_url):
        ender = in_background(end_session(postgres_url, _BUILDING))
        with MigrationManager(postgres_url, db_lock_timeout="120s") as manager:
            with pytest.raises(ConnectionLostError) as raised:
                manager.upgrade()
        ender.join(30)
    line = str(raised.value)
    assert raised.value.exit_code == 3 and raised.value.revision == "003"
    assert line.startswith("migration 003 was cut off: the database ended its connection "
                           "(AdminShutdown: terminating connection"), line
    # 003 builds its indexes outside a transaction: what may be left, and that a rerun
    # completes it.
    assert "003 runs statements outside a transaction" in line
    assert "running it again completes it" in line and "the database is at 002" in line
    assert "fix the script" not in line
    with MigrationManager(postgres_url) as manager:
        last = manager.applied_history()[-1]
        assert (last.revision, last.success) == ("003", False)
        assert "AdminShutdown" in last.error
        assert manager.upgrade() == revisions_after("002")
    assert_applied_exactly_once(postgres_url, allowed_failures=("OperationalError",))


@pytest.mark.postgres
def test_cli_ends_with_exit_3_and_retries_reconnect_after_the_connection_is_ended(postgres_url):
    """Without --retries: exit 3 and one line. With them: reconnect, take the lock again, plan
    again, complete."""
    at_002_with_tasks(postgres_url)
    with writer_in_the_way(postgres_url):
        first = upgrade(postgres_url)
        in_background(end_session(postgres_url, _BUILDING)).join(60)
        assert first.wait(timeout=60) == 3
        line = one_error_line(first.communicate()[1])
        assert line.startswith("Error: migration 003 was cut off: the database ended its "
                               "connection (AdminShutdown"), line
        assert "unexpected" not in line
    with writer_in_the_way(postgres_url) as writer:
        again = upgrade(postgres_url, "--retries", "3")
        in_background(end_session(postgres_url, _BUILDING)).join(60)
        said = again.stderr.readline()
        assert "migration 003 was cut off" in said and "(retry 1 of 3 in 0.5s)" in said, said
        writer.rollback()
    assert again.wait(timeout=120) == 0, again.communicate()
    assert "Applied 003, 004" in again.communicate()[0]
    assert_applied_exactly_once(postgres_url,
                                allowed_failures=("OperationalError", "OperationalError"))


@pytest.mark.postgres
@pytest.mark.skipif(os.environ.get("ORCHESTRATOR_TEST_RESTART_SERVER") != "1",
                    reason="restarts the PostgreSQL server, ending every session on it; "
                    "opt in with ORCHESTRATOR_TEST_RESTART_SERVER=1 (CI, or a server of your own)")
def test_a_server_restart_mid_003_is_named_and_the_rerun_completes(postgres_url, monkeypatch):
    """The server restarts (`pg_ctlcluster 15 main restart -m fast`, or
    ORCHESTRATOR_TEST_RESTART_COMMAND) while 003 builds an index: exit 3 naming 003, not
    "unexpected"; once the server is back the step reads as interrupted (or failed), and a
    rerun completes it.

    Opt-in only: ORCHESTRATOR_TEST_RESTART_SERVER=1. It ends every session on the server,
    other tests' and other people's too.
    """
    restart = os.environ.get("ORCHESTRATOR_TEST_RESTART_COMMAND",
                             "pg_ctlcluster 15 main restart -m fast")
    # Not settings: the command would warn about them on stderr.
    monkeypatch.delenv("ORCHESTRATOR_TEST_RESTART_SERVER")
    monkeypatch.delenv("ORCHESTRATOR_TEST_RESTART_COMMAND", raising=False)
    at_002_with_tasks(postgres_url)
    with writer_in_the_way(postgres_url):
        first = upgrade(postgres_url)
        wait_for(lambda: query(postgres_url, _BUILDING), "003 building", first)
        subprocess.run(restart, shell=True, check=True, timeout=120)
        assert first.wait(timeout=120) == 3
        # With the server still going down, the step cannot be recorded as failed now: a note
        # says so (its row, written as the step began, reads as interrupted), then the error.
        *notes, line = first.communicate()[1].strip().splitlines()
        assert all(note.startswith("could not record the failed step") for note in notes), notes
        assert line.startswith("Error: migration 003 was cut off: the database ended its "
                               "connection"), line
    with MigrationManager(postgres_url) as manager:
        status = manager.status()
        assert status.current == "002"
        last = manager.applied_history()[-1]
        assert last.revision == "003" and not last.success
    rerun = upgrade(postgres_url)
    assert rerun.wait(timeout=120) == 0, rerun.communicate()
    with MigrationManager(postgres_url) as manager:
        assert manager.status().up_to_date
    assert query(postgres_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0


# -- PostgreSQL: what the guards do, one at a time -----------------------------------------


@pytest.mark.postgres
def test_a_lock_whose_session_ended_is_seen_as_lost_and_let_go_quietly(postgres_url):
    watch = lock.Watch()
    engine = create_engine(postgres_url)
    with engine.connect() as connection, lock.advisory_lock(connection, 1, watch=watch):
        watch.verify()
        pid = connection.connection.driver_connection.info.backend_pid
        assert query(postgres_url, f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(MigrationLockLost, match="its session ended: "):
            watch.verify()
    engine.dispose()
    with migration_lock_free(postgres_url):
        pass


@contextlib.contextmanager
def migration_lock_free(url: str) -> Iterator[None]:
    engine = create_engine(url)
    with engine.connect() as connection, lock.advisory_lock(connection, 5) as held:
        assert held
        yield
    engine.dispose()


@pytest.mark.postgres
def test_a_lock_let_go_on_the_server_is_seen_as_lost(postgres_url):
    watch = lock.Watch()
    engine = create_engine(postgres_url)
    with engine.connect() as connection, lock.advisory_lock(connection, 1, watch=watch):
        watch.verify()  # held
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock.ADVISORY_LOCK_KEY})
        with pytest.raises(MigrationLockLost, match="the server no longer lists it as held"):
            watch.verify()
    engine.dispose()


@pytest.mark.postgres
def test_a_migrator_waits_for_one_that_lost_the_lock_to_stop_then_plans_again(postgres_url):
    """The migrating key still held by a migrator that lost the lock: the new holder waits for
    it, then plans from what that one left (here: it had finished 003)."""
    MigrationManager(postgres_url).upgrade("002")
    engine = create_engine(postgres_url, poolclass=NullPool)
    stopping = engine.connect()
    stopping.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock.MIGRATING_KEY})
    stopping.commit()

    def finish_and_stop() -> None:
        time.sleep(0.5)
        migrate_without_the_lock(postgres_url, "upgrade", "003")  # its last step, committed
        stopping.close()  # its session ends, and the key with it

    thread = threading.Thread(target=finish_and_stop)
    thread.start()
    try:
        assert MigrationManager(postgres_url, lock_timeout=30).upgrade() == revisions_after("003")
    finally:
        thread.join()
        engine.dispose()
    assert MigrationManager(postgres_url).status().up_to_date


@pytest.mark.postgres
def test_a_migrator_that_never_stops_is_waited_for_up_to_the_lock_timeout(postgres_url):
    engine = create_engine(postgres_url)
    with engine.connect() as stuck:
        stuck.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock.MIGRATING_KEY})
        stuck.commit()
        with pytest.raises(MigrationLockTimeout, match="lost the migration lock was still"):
            MigrationManager(postgres_url, lock_timeout=0.3).upgrade("001")
    engine.dispose()
    assert MigrationManager(postgres_url).get_current_revision() is None


@pytest.mark.postgres
def test_a_waiter_that_then_finds_its_target_passed_does_nothing(postgres_url):
    MigrationManager(postgres_url).upgrade("001")
    engine = create_engine(postgres_url, poolclass=NullPool)
    stopping = engine.connect()
    stopping.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock.MIGRATING_KEY})
    stopping.commit()

    def finish_and_stop() -> None:
        time.sleep(0.5)
        migrate_without_the_lock(postgres_url, "upgrade", "003")
        stopping.close()

    thread = threading.Thread(target=finish_and_stop)
    thread.start()
    try:
        assert MigrationManager(postgres_url, lock_timeout=30).upgrade("002") == []
    finally:
        thread.join()
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize(("sqlstate", "name"), [("40P01", "DeadlockDetected"),
                                                ("40001", "SerializationFailure")])
def test_deadlocks_and_serialization_failures_are_transient_not_the_scripts_fault(
    postgres_url, tmp_path, sqlstate, name
):
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, f"""op.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' \
USING ERRCODE = '{sqlstate}'; END $$")""")
    with MigrationManager(postgres_url, script_location=str(scripts)) as manager:
        manager.upgrade("004")
        with pytest.raises(TransientDatabaseError) as raised:
            manager.upgrade()
        assert raised.value.exit_code == 5
        message = str(raised.value)
        assert message.startswith(f"migration {revision} met a conflict with another "
                                  f"transaction ({name}: conflict)")
        assert message.endswith("transient: run it again or use `--retries N`")
        assert "fix the script" not in message
        assert manager.get_current_revision() == "004"


@pytest.mark.postgres
def test_cli_retries_a_deadlock(postgres_url, tmp_path):
    """A conflict that is gone on the next attempt: `--retries` goes on by itself."""
    scripts = copy_scripts(tmp_path)
    marker = tmp_path / "conflicted-once"
    add_revision(scripts, f"""
if not Path({str(marker)!r}).exists():
    Path({str(marker)!r}).write_text("once")
    op.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40P01'; END $$")
""")
    MigrationManager(postgres_url, script_location=str(scripts)).upgrade("004")
    done = subprocess.run(cli_argv(scripts, "db", "upgrade", "--retries", "2", "--database-url",
                                   postgres_url), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "transient: run it again or use `--retries N` (retry 1 of 2" in done.stderr


def test_a_connection_lost_with_the_server_down_is_still_named(sqlite_url, tmp_path, monkeypatch):
    """The server gone for good (stood in for by failing reads once the step failed): the
    step's row cannot be written, the error still names the revision and says where the
    database should be."""
    from sqlalchemy.exc import OperationalError

    from orchestrator.migrations import DatabaseUnreachableError
    from orchestrator.migrations.manager import MigrationManager as Manager

    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, "raise sa.exc.OperationalError('COMMIT', {}, "
                                     "ConnectionError('server closed the connection'), "
                                     "connection_invalidated=True)")

    def server_down(*args, **kwargs):
        raise DatabaseUnreachableError("cannot reach the database")

    def failure_not_recorded(*args, **kwargs):
        monkeypatch.setattr(Manager, "_version_rows", server_down)
        server_down()

    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        manager.upgrade("004")
        monkeypatch.setattr(Manager, "_record_failure", failure_not_recorded)
        with pytest.raises(ConnectionLostError) as raised:
            manager.upgrade()
        assert isinstance(raised.value.__cause__, OperationalError)
    message = str(raised.value)
    assert raised.value.exit_code == 3 and raised.value.revision == revision
    assert f"nothing of {revision} was committed" in message
    assert "the database should be at 004 (it cannot be read now)" in message


def test_a_failure_recording_a_step_is_not_hidden_when_the_connection_was_not_lost(
    sqlite_url, tmp_path, monkeypatch
):
    from orchestrator.migrations import DatabaseUnreachableError
    from orchestrator.migrations import manager as manager_module

    scripts = copy_scripts(tmp_path)
    add_revision(scripts, "raise ValueError('bad')")
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        manager.upgrade("004")

        def unreachable(self, *args, **kwargs):
            raise DatabaseUnreachableError("cannot reach the database")

        monkeypatch.setattr(manager_module.MigrationManager, "_record_failure", unreachable)
        with pytest.raises(DatabaseUnreachableError, match="cannot reach the database"):
            manager.upgrade()


def test_a_downgrade_cut_off_says_to_run_the_same_downgrade(sqlite_url, tmp_path):
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, "pass", "raise sa.exc.OperationalError('SELECT 1', {}, "
                            "ConnectionError('gone'), connection_invalidated=True)")
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        manager.upgrade()
        with pytest.raises(ConnectionLostError) as raised:
            manager.downgrade("004")
    message = str(raised.value)
    assert f"migration {revision} was cut off" in message
    assert f"the database is at {revision}" in message
    assert "run the same `orchestrator db downgrade` again" in message


def test_an_error_without_a_message_is_still_named():
    from orchestrator.migrations.errors import one_line as _reason

    assert _reason(ValueError()) == "ValueError: no message"


# -- SQLite: the lock file -------------------------------------------------------------------

# Long enough to remove the lock file and start a second migrator midway; SQLite's interrupt
# ends it (the statement is the step's, inside its write transaction).
_LONG_STEP = """
marker = os.environ.get("ORCH_TEST_MARKER")
op.create_index("ix_tasks_title", "tasks", ["title"])
if marker:
    Path(marker).write_text("midway")
    op.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
               "WHERE i < 2000000000) SELECT count(*) FROM n")
"""


def test_sqlite_lock_file_removed_midway_stops_the_migrator_and_a_second_completes(
    sqlite_url, tmp_path
):
    """A cleaner (a second checkout) removes the lock file while a migration runs, and a
    second migrator starts: the first sees its lock gone and stops, the second waits for its
    step to end, then applies it once."""
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, _LONG_STEP, 'op.drop_index("ix_tasks_title", "tasks")')
    MigrationManager(sqlite_url, script_location=str(scripts)).upgrade("004")
    marker = tmp_path / "midway"
    argv = cli_argv(scripts, "db", "upgrade", "--database-url", sqlite_url)
    first = subprocess.Popen(argv, env={**os.environ, "ORCH_TEST_MARKER": str(marker)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker.exists, "the step midway", first)
        lock_file = lock.lock_file_for(Path(sqlite_url.removeprefix("sqlite:///")))
        lock_file.unlink()
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        assert first.wait(timeout=60) == 4
        line = one_error_line(first.communicate()[1])
        # Removed, or already replaced by the second migrator's file when the first looked.
        assert any(line.startswith(f"Error: lost the migration lock (its lock file {lock_file} "
                                   f"was {what}) during {revision}")
                   for what in ("removed", "replaced")), line
        assert "the database is at 004" in line
        assert second.wait(timeout=60) == 0, second.communicate()
        assert f"Applied {revision}" in second.communicate()[0]
    finally:
        first.kill()
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        assert manager.status().up_to_date
        entries = manager.applied_history()
    successes = Counter(e.revision for e in entries if e.success)
    assert set(successes.values()) == {1} and successes[revision] == 1
    assert [e.error for e in entries if not e.success] == ["interrupted"]


@pytest.mark.parametrize(("command", "readable"), [("upgrade", True), ("downgrade", False)])
def test_a_step_that_finds_the_lock_gone_at_its_commit_commits_nothing(
    sqlite_url, tmp_path, monkeypatch, command, readable
):
    """The lock is asked for before each commit: a lock file removed during a step (here by
    the step itself) stops the step at its commit, and nothing of it is committed."""
    from orchestrator.migrations.manager import MigrationManager as Manager

    lock_file = lock.lock_file_for(Path(sqlite_url.removeprefix("sqlite:///")))
    # Not when the step is only rendered (the downgrade's preview renders it offline first).
    removal = (f"op.create_index('ix_tasks_title', 'tasks', ['title'])\n"
               f"if not op.get_context().as_sql:\n"
               f"        Path({str(lock_file)!r}).unlink()")
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, removal if command == "upgrade" else "pass",
                            removal if command == "downgrade" else "pass")
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        manager.upgrade("004" if command == "upgrade" else revision)
        if not readable:
            monkeypatch.setattr(Manager, "_revision_now", lambda self: None)
        with pytest.raises(MigrationLockLost) as raised:
            manager.upgrade() if command == "upgrade" else manager.downgrade("004")
        monkeypatch.undo()
        assert manager.get_current_revision() == ("004" if command == "upgrade" else revision)
        assert manager.applied_history()[-1].error == "interrupted"
    message = str(raised.value)
    assert message.startswith(f"lost the migration lock (its lock file {lock_file} was "
                              f"removed) during {revision}, and stopped without committing it")
    if command == "upgrade":
        assert "the database is at 004; run `orchestrator db upgrade` again" in message
    else:
        assert ("the database could not be read to tell its revision; run the same "
                "`orchestrator db downgrade` again") in message
    assert "ix_tasks_title" not in str(snapshot(sqlite_url)["tasks"]["indexes"])


def test_a_sqlite_migration_waits_for_a_writer_then_gives_up(sqlite_url, monkeypatch):
    """Before it plans under the lock, a migration takes the database's write lock once (a step
    of a migrator that lost the lock may be in flight); a writer that keeps it longer than the
    busy timeout makes it give up, exit code 5, nothing done."""
    import sqlite3

    from orchestrator import db
    from orchestrator.migrations import DatabaseLockTimeout

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT", 0.3)
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade("002")
        writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            with pytest.raises(DatabaseLockTimeout, match=r"^the upgrade gave up waiting for the "
                                                          r"database's write lock"):
                manager.upgrade()
        finally:
            writer.close()
        assert manager.get_current_revision() == "002"


@pytest.mark.postgres
def test_the_migrating_key_of_a_session_that_ended_needs_no_letting_go(postgres_url):
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        with lock.migrating(connection, 1):
            pid = connection.connection.driver_connection.info.backend_pid
            assert query(postgres_url, f"SELECT pg_terminate_backend({pid})")
    engine.dispose()
    assert query(postgres_url, _ADVISORY_HOLDER.format(key=lock.MIGRATING_KEY)) is None


def test_a_lock_file_replaced_while_held_is_seen_as_lost(tmp_path):
    path = tmp_path / "db.migrate.lock"
    watch = lock.Watch()
    with lock.file_lock(path, timeout=1, watch=watch) as held:
        assert held
        watch.verify()
        path.unlink()
        path.write_text("another")
        with pytest.raises(MigrationLockLost, match="was replaced"):
            watch.verify()


def test_a_waiter_whose_lock_file_was_removed_takes_the_one_at_the_path(tmp_path):
    """A waiter opened the file, which was removed before it could lock it: the lock it gets
    at last on the old file guards nothing, so it takes the file now at the path."""
    path = tmp_path / "db.migrate.lock"
    release, outcome = threading.Event(), {}
    holding = threading.Event()

    def holder() -> None:
        with lock.file_lock(path, timeout=1):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)

    def waiter() -> None:
        watch = lock.Watch()
        with lock.file_lock(path, timeout=30, notify=lambda _: waiting.set(),
                            watch=watch) as held:
            outcome.update(held=held, inode=path.stat().st_ino)
            watch.verify()

    waiting = threading.Event()
    other = threading.Thread(target=waiter)
    other.start()
    assert waiting.wait(10)
    old = path.stat().st_ino
    path.unlink()
    release.set()
    thread.join()
    other.join(30)
    assert outcome["held"] is True and outcome["inode"] != old


def test_the_watch_stops_the_running_statement_once_the_lock_is_lost(monkeypatch):
    monkeypatch.setattr("orchestrator.migrations.lock.watch._WATCH_SECONDS", 0.01)
    watch, stopped = lock.Watch(), threading.Event()
    watch.check = lambda: "gone"
    with watch.watching(stopped.set):
        assert stopped.wait(10)
    assert watch.lost == "gone"
    with pytest.raises(MigrationLockLost, match=r"lost the migration lock \(gone\)"):
        watch.refuse_if_lost()


# -- PostgreSQL: a waiter's session ---------------------------------------------------------

_SESSION_OF = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
               "AND application_name LIKE 'orchestrator-migrate % pid {pid}'")


@pytest.mark.postgres
def test_a_waiters_session_ended_is_named_exit_3_and_retries_wait_again(postgres_url):
    """A DBA (a pooler, a restart) ends the session of a migrator waiting for the lock: exit 3
    saying nothing was done, not "unexpected"; with --retries it reconnects and waits again."""
    at_002_with_tasks(postgres_url)
    with writer_in_the_way(postgres_url) as writer:
        first = upgrade(postgres_url)
        wait_for(lambda: query(postgres_url, _BUILDING), "003 building an index", first)
        waiter = upgrade(postgres_url)
        patient = upgrade(postgres_url, "--retries", "2")
        for process in (waiter, patient):
            assert "waiting for the migration lock" in process.stderr.readline()
            end_session(postgres_url, _SESSION_OF.format(pid=process.pid))()
        assert waiter.wait(timeout=60) == 3, waiter.communicate()
        line = one_error_line(waiter.communicate()[1])
        assert line.startswith("Error: the database ended the session waiting for the "
                               "migration lock ("), line
        assert "nothing was done" in line and "Error: unexpected" not in line
        said = patient.stderr.readline()
        assert "waiting for the migration lock" in said and "(retry 1 of 2 in 0.5s)" in said, said
        writer.rollback()
    assert first.wait(timeout=120) == 0, first.communicate()
    assert patient.wait(timeout=60) == 0, patient.communicate()
    assert "another migrator already did it" in patient.communicate()[0]
    assert_applied_exactly_once(postgres_url)


def _end_own_session(connection) -> None:
    pid = connection.connection.driver_connection.info.backend_pid
    with contextlib.suppress(Exception):  # the session may be the one ending itself
        connection.connection.driver_connection.execute(f"SELECT pg_terminate_backend({pid})")


@pytest.mark.postgres
@pytest.mark.parametrize("when", ["before a try", "while sleeping on the socket"])
def test_a_waiter_whose_session_ends_raises_connection_lost(postgres_url, when):
    """Ended as a statement runs (SQLAlchemy sees it) or while waiting for a notification (only
    the driver does): either way the waiter's loss is named."""
    engine = create_engine(postgres_url)
    with migration_lock_free(postgres_url), engine.connect() as connection:
        hooks = {"still_needed": lambda: True, "notify": lambda _message: None}
        hook = "still_needed" if when == "before a try" else "notify"
        hooks[hook] = lambda *_: _end_own_session(connection) or True
        with pytest.raises(ConnectionLostError, match="the database ended the session waiting "
                           "for the migration lock") as raised:
            with lock.advisory_lock(connection, 30, **hooks):
                pass  # pragma: no cover - never held
    engine.dispose()
    assert raised.value.exit_code == 3 and "nothing was done" in str(raised.value)


@pytest.mark.postgres
def test_a_waiters_other_errors_pass_through(postgres_url):
    engine = create_engine(postgres_url)

    def still_needed() -> bool:
        raise RuntimeError("boom")

    with migration_lock_free(postgres_url), engine.connect() as connection:
        with pytest.raises(RuntimeError, match="boom"):
            with lock.advisory_lock(connection, 30, still_needed=still_needed):
                pass  # pragma: no cover - never held
    engine.dispose()


@pytest.mark.postgres
def test_the_backup_before_a_migration_survives_an_idle_in_transaction_timeout(
    postgres_url, tmp_path
):
    """The backup's snapshot is held by a transaction that sits idle while pg_dump runs: a
    managed server's idle_in_transaction_session_timeout must not end it (here pg_dump is kept
    waiting for a table lock for longer than the timeout)."""
    at_002_with_tasks(postgres_url)
    engine = create_engine(postgres_url, poolclass=NullPool)
    blocker = engine.connect()
    blocker.execute(text("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE"))
    name = make_url(postgres_url).database
    # Sessions that start from now on get it; the blocker's is older.
    query(postgres_url, f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout "
                        "= '200ms'")

    def release_once_pg_dump_waited() -> None:
        try:
            wait_for(lambda: query(postgres_url, (
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'pg_dump' AND wait_event_type = 'Lock' "
                "AND now() - query_start > interval '1 second'")), "pg_dump waiting a second")
        finally:
            blocker.rollback()  # never leave the upgrade waiting behind it

    releaser = in_background(release_once_pg_dump_waited)
    try:
        with MigrationManager(postgres_url, backup_before_migrate=True,
                              backup_dir=tmp_path) as manager:
            assert manager.upgrade() == revisions_after("002")
            assert manager.last_backup is not None and manager.last_backup.revision == "002"
    finally:
        releaser.join(60)
        blocker.close()
        engine.dispose()
    assert_applied_exactly_once(postgres_url)
