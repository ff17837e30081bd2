"""One migrator at a time: concurrent upgrades, waiting, timeouts, and dead holders."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.db import create_engine
from orchestrator.migrations import DatabaseLockTimeout, DatabaseUnreachableError, MigrationManager
from orchestrator.migrations import lock
from orchestrator.migrations.lock import ADVISORY_LOCK_KEY, advisory_lock, file_lock
from tests.migrations.test_schema import TASK_INDEXES
from tests.schema import scalar, snapshot


def orchestrator(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def lock_file_of(url: str) -> Path:
    return lock.lock_file_for(Path(url.removeprefix("sqlite:///")))


@pytest.mark.slow
def test_eight_processes_upgrading_at_once_apply_each_revision_once(db_url: str):
    processes = [orchestrator("db", "upgrade", "--database-url", db_url) for _ in range(8)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    head = MigrationManager(db_url).get_head_revision()
    appliers = [out for _, out, _ in results if "Applied" in out]
    assert len(appliers) == 1, appliers
    assert appliers[0].count("  001  ") == 1 and f"  {head}  " in appliers[0]
    assert sum("nothing to apply" in out or "another migrator already did it" in out
               for _, out, _ in results) == 7
    assert MigrationManager(db_url).status().up_to_date
    indexes = {name: cols for name, cols, _ in snapshot(db_url)["tasks"]["indexes"]}
    assert indexes == TASK_INDEXES


@contextlib.contextmanager
def migration_lock(db_url: str, timeout: float, **options) -> Iterator[bool]:
    """The lock a migrator takes on `db_url`: the lock file, or the advisory lock."""
    if db_url.startswith("sqlite"):
        with file_lock(lock_file_of(db_url), timeout, **options) as held:
            yield held
        return
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection, advisory_lock(connection, timeout, **options) as held:
            yield held
    finally:
        engine.dispose()


def _hold_lock(db_url: str, stop: threading.Event, held: threading.Event) -> None:
    with migration_lock(db_url, timeout=5):
        held.set()
        stop.wait(30)


@pytest.fixture
def lock_holder(db_url: str):
    """Holds the migration lock in a thread until `stop` is set."""
    stop, held = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold_lock, args=(db_url, stop, held))
    thread.start()
    assert held.wait(10)
    yield stop
    stop.set()
    thread.join()


def test_a_waiter_says_once_for_whom_it_waits_then_times_out(db_url, lock_holder):
    process = orchestrator("db", "upgrade", "--lock-timeout", "0.5", "--database-url", db_url)
    code = process.wait(timeout=60)
    _, err = process.communicate()
    assert code == 4
    assert err.count("waiting for the migration lock held by") == 1
    if db_url.startswith("sqlite"):
        assert f"{socket.gethostname()} pid {os.getpid()}" in err
    else:
        assert "server backend" in err
    assert "held the migration lock for more than 0.5s" in err
    assert MigrationManager(db_url).get_current_revision() is None


def test_a_waiter_proceeds_when_the_lock_is_released(db_url, lock_holder):
    process = orchestrator("db", "upgrade", "--database-url", db_url)
    # Release only once the waiter says it waits.
    assert "waiting for the migration lock" in process.stderr.readline()
    lock_holder.set()
    assert process.wait(timeout=120) == 0
    out, err = process.communicate()
    assert "Applied" in out
    assert MigrationManager(db_url).status().up_to_date


def test_ctrl_c_while_waiting_exits_130_in_one_line(db_url, lock_holder):
    process = orchestrator("db", "upgrade", "--database-url", db_url)
    assert "waiting for the migration lock" in process.stderr.readline()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    _, err = process.communicate()
    assert err.strip() == "Interrupted." and "Traceback" not in err
    lock_holder.set()
    assert MigrationManager(db_url).get_current_revision() is None
    with migration_lock(db_url, timeout=10) as held:  # nothing was left holding the lock
        assert held


def test_a_waiter_is_woken_when_the_lock_is_let_go(db_url, lock_holder, monkeypatch):
    """Waiting costs nothing: the waiter sleeps until the holder lets go (a NOTIFY on
    PostgreSQL, a free lock file on SQLite), then takes the lock."""
    monkeypatch.setattr("orchestrator.migrations.lock.waiting.RECHECK_SECONDS", 3600)  # no looking again unless woken
    waiting, outcome = threading.Event(), {}

    def waiter() -> None:
        with migration_lock(db_url, timeout=7200, notify=lambda _: waiting.set()) as held:
            outcome.update(held=held, holder_gone=lock_holder.is_set())

    thread = threading.Thread(target=waiter, daemon=True)  # a failure must not hang pytest
    thread.start()
    assert waiting.wait(30)
    lock_holder.set()  # the holder lets go
    thread.join(60)
    assert not thread.is_alive(), "the waiter was not woken by the release"
    assert outcome == {"held": True, "holder_gone": True}


def test_an_interrupted_waiter_stops_waiting_before_letting_go(tmp_path):
    """Ctrl-C while waiting: the helper thread that waits stops before the caller closes the lock
    file under it, and the interruption reaches the caller."""

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    def interrupt_soon(_message: str) -> None:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()

    previous = signal.signal(signal.SIGUSR1, interrupt)
    path = tmp_path / "db.migrate.lock"
    try:
        with file_lock(path, timeout=60):
            with pytest.raises(Interrupted):
                with file_lock(path, timeout=60, notify=interrupt_soon):
                    pass  # pragma: no cover - never reached
    finally:
        signal.signal(signal.SIGUSR1, previous)
    waiters = [t for t in threading.enumerate() if t.name == "migration-lock-waiter"]
    for thread in waiters:  # it stopped waiting; at most its last lines remain to run
        thread.join(5)
    assert not any(thread.is_alive() for thread in waiters)
    with file_lock(path, timeout=1) as held:  # and nothing holds the lock any more
        assert held


def test_nothing_to_do_needs_no_lock_file(tmp_path):
    """An up-to-date database whose folder cannot take the lock file is not an error."""
    unwritable = tmp_path / "missing" / "db.migrate.lock"
    with file_lock(unwritable, timeout=1, still_needed=lambda: False) as held:
        assert held is False
    with pytest.raises(DatabaseUnreachableError, match="cannot create the migration lock file"):
        with file_lock(unwritable, timeout=1, still_needed=lambda: True):
            pass  # pragma: no cover - never reached


HOLD_AND_SLEEP = """
import sys, time
from orchestrator.db import create_engine
from orchestrator.migrations.lock import advisory_lock, file_lock
from pathlib import Path
url, lock_path = sys.argv[1], sys.argv[2]
if url.startswith("sqlite"):
    with file_lock(Path(lock_path), timeout=5):
        print("held", flush=True); time.sleep(120)
else:
    with create_engine(url).connect() as c, advisory_lock(c, timeout=5):
        print("held", flush=True); time.sleep(120)
"""


def test_the_lock_dies_with_its_holder(db_url: str):
    lock_path = str(lock_file_of(db_url)) if db_url.startswith("sqlite") else ""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_SLEEP, db_url, lock_path], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="held the migration lock"):
        MigrationManager(db_url, lock_timeout=0.2).upgrade("001")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert MigrationManager(db_url, lock_timeout=30).upgrade("001") == ["001"]


@pytest.mark.postgres
def test_advisory_lock_key_is_visible_to_operators(postgres_url: str):
    engine = create_engine(postgres_url)
    with engine.connect() as connection, advisory_lock(connection, timeout=1):
        with engine.connect() as other:
            held = other.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"k": ADVISORY_LOCK_KEY},
            ).scalar()
    engine.dispose()
    assert held == 1


# -- PostgreSQL table-lock timeouts ----------------------------------------------------------


@pytest.fixture
def long_transaction(postgres_url: str):
    """A transaction that holds a lock on `tasks`, as a long report query would."""
    MigrationManager(postgres_url).upgrade("001")
    engine = create_engine(postgres_url)
    connection = engine.connect()
    connection.execute(text("LOCK TABLE tasks IN ACCESS SHARE MODE"))
    yield connection
    connection.close()
    engine.dispose()


@pytest.mark.postgres
def test_a_migration_behind_a_long_transaction_fails_fast(postgres_url, long_transaction):
    manager = MigrationManager(postgres_url, db_lock_timeout="200ms")
    with pytest.raises(DatabaseLockTimeout, match="migration 002 gave up waiting for a table lock"):
        manager.upgrade("002")
    assert manager.get_current_revision() == "001"


@pytest.mark.postgres
def test_migration_sessions_run_with_the_configured_lock_timeout(postgres_url, tmp_path):
    from tests.fixtures import add_revision, copy_scripts

    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, "op.execute(\"CREATE TABLE seen AS SELECT "
                                     "current_setting('lock_timeout') AS lock_timeout\")",
                            "op.execute('DROP TABLE seen')")
    manager = MigrationManager(postgres_url, script_location=str(scripts), db_lock_timeout="1234ms")
    assert manager.upgrade()[-1] == revision
    assert scalar(postgres_url, "SELECT lock_timeout FROM seen") == "1234ms"


@pytest.mark.postgres
def test_retries_wait_out_a_long_transaction(postgres_url, long_transaction):
    process = orchestrator(
        "db", "upgrade", "002", "--retries", "50", "--database-url", postgres_url,
        env={"DB_LOCK_TIMEOUT": "200ms"},
    )
    # Let the long transaction go only once the migrator has timed out and said it retries.
    said = []
    while not said or ("retry 1 of 50" not in said[-1] and said[-1]):
        said.append(process.stderr.readline())
    assert "retry 1 of 50" in said[-1], said
    long_transaction.rollback()
    assert process.wait(timeout=120) == 0
    out, _ = process.communicate()
    assert "Applied 002" in out


@pytest.mark.postgres
def test_an_interrupted_concurrent_index_build_is_rebuilt(postgres_url: str):
    """A failed CREATE INDEX CONCURRENTLY leaves an INVALID index; 003 drops and rebuilds it."""
    manager = MigrationManager(postgres_url)
    manager.upgrade("002")
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("INSERT INTO users (email, name) VALUES ('a@b.c', 'A')"))
        connection.execute(text("INSERT INTO projects (owner_id, name) VALUES (1, 'P')"))
        connection.execute(text("INSERT INTO tasks (project_id, title) VALUES (1, 'x'), (1, 'y')"))
        with pytest.raises(Exception, match="could not create unique index"):
            connection.execute(text("CREATE UNIQUE INDEX CONCURRENTLY ix_tasks_status ON tasks (status)"))
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_tasks_status'::regclass"
        assert connection.execute(text(valid)).scalar() is False
        manager.upgrade("003")
        assert connection.execute(text(valid)).scalar() is True
        unique = "SELECT indisunique FROM pg_index WHERE indexrelid = 'ix_tasks_status'::regclass"
        assert connection.execute(text(unique)).scalar() is False
    engine.dispose()


def migrate_without_the_lock(db_url: str, command: str, target: str) -> None:
    """Alembic called from code: no lock of its own (the holder's work, done under its lock),
    with its history recorded as plain runs record it."""
    from alembic import command as commands

    from orchestrator.migrations.manager import alembic_config

    config = alembic_config(db_url)
    del config.attributes["managed"]
    getattr(commands, command)(config, target)


@pytest.mark.parametrize("command", ["upgrade", "downgrade"])
def test_a_waiter_leaves_without_the_lock_once_the_holder_did_the_work(db_url, command, monkeypatch):
    """Replicas queued behind the migrator don't each take the lock in turn to find nothing to
    do: they see the database reach their target while waiting, and leave."""
    if command == "downgrade":
        MigrationManager(db_url).upgrade("002")
    stop, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db_url, stop, held))
    holder.start()
    assert held.wait(10)
    outcome: dict = {}

    def waiter() -> None:
        manager = MigrationManager(db_url, lock_timeout=60)
        action = manager.upgrade if command == "upgrade" else manager.downgrade
        outcome["result"] = action("001")
        outcome["lock_still_held"] = not stop.is_set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)  # the waiter is waiting: it looks again every 0.25 s
    # The lock holder's work, done without our lock (as the holder would, under it).
    migrate_without_the_lock(db_url, command, "001")
    thread.join(30)
    stop.set()
    holder.join()
    assert outcome == {"result": [], "lock_still_held": True}
    assert MigrationManager(db_url).get_current_revision() == "001"


# -- the plain `alembic` command takes the same lock ---------------------------------------


def plain_alembic(db_url: str, *args: str, lock_timeout: str = "60") -> subprocess.Popen:
    """`alembic ARGS` from the repository root, as an operator would type it."""
    from tests.conftest import ROOT

    return subprocess.Popen(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DATABASE_URL": db_url, "MIGRATION_LOCK_TIMEOUT": lock_timeout},
    )


def alembic_here(db_url: str, *args: str, monkeypatch, lock_timeout: str = "60") -> None:
    """`alembic ARGS` in this process (measured by coverage), with the repository's alembic.ini."""
    from alembic.config import main as alembic_main

    from orchestrator.settings import get_settings
    from tests.conftest import ROOT

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", lock_timeout)
    get_settings.cache_clear()
    alembic_main(["-c", str(ROOT / "alembic.ini"), *args])


@pytest.mark.parametrize("command", [("upgrade", "head"), ("downgrade", "base"), ("stamp", "002")])
def test_plain_alembic_writes_wait_for_the_migration_lock(db_url, lock_holder, monkeypatch,
                                                          capfd, command):
    with pytest.raises(SystemExit):  # Alembic's exit on a CommandError
        alembic_here(db_url, *command, monkeypatch=monkeypatch, lock_timeout="0.5")
    err = capfd.readouterr().err
    assert err.count("waiting for the migration lock held by") == 1
    # One line, as Alembic reports its own errors, naming the setting plain alembic reads.
    assert "another migration" in err and "MIGRATION_LOCK_TIMEOUT" in err
    assert "held the migration lock for more than 0.5s" in err and "Traceback" not in err
    assert MigrationManager(db_url).get_current_revision() is None


def test_plain_alembic_in_a_missing_folder_says_so_in_one_line(tmp_path, monkeypatch, capfd):
    with pytest.raises(SystemExit):
        alembic_here(f"sqlite:///{tmp_path}/missing/x.db", "upgrade", "head",
                     monkeypatch=monkeypatch)
    assert "check that the database's folder exists and is writable" in capfd.readouterr().err


def test_plain_alembic_goes_on_without_a_lock_file_it_cannot_create(tmp_path, monkeypatch,
                                                                   capfd):
    """A folder the user may not write in (stood in for by a directory where the lock file
    would go, since the tests may run as root): the lock cannot be taken, and neither could the
    database be changed there, so an up-to-date database is not an error."""
    url = f"sqlite:///{tmp_path}/x.db"
    MigrationManager(url).upgrade()
    lock_file_of(url).unlink()
    lock_file_of(url).mkdir()
    alembic_here(url, "upgrade", "head", monkeypatch=monkeypatch)
    assert "cannot create the migration lock file" in capfd.readouterr().err


def test_plain_alembic_applies_only_what_is_still_missing_after_waiting(db_url, lock_holder):
    """The holder migrates while `alembic upgrade head` waits; once let in, it applies nothing."""
    process = plain_alembic(db_url, "upgrade", "head")
    assert "waiting for the migration lock" in process.stderr.readline()
    migrate_without_the_lock(db_url, "upgrade", "head")  # the holder's migration
    lock_holder.set()
    assert process.wait(timeout=60) == 0, process.communicate()[1]
    manager = MigrationManager(db_url)
    revisions = [entry.revision for entry in manager.applied_history()]
    assert revisions == [info.revision for info in manager.history()]  # each applied once


def test_plain_alembic_reads_take_no_lock(db_url, lock_holder):
    process = plain_alembic(db_url, "current", lock_timeout="0.5")
    assert process.wait(timeout=60) == 0, process.communicate()[1]


def test_a_missing_lock_file_is_held_by_nobody(tmp_path):
    assert lock.file_lock_taken(tmp_path / "never-made.migrate.lock") is False
