"""The error family and `classify`: driver errors recognised by code, raised for real by SQLite
and PostgreSQL rather than built by hand."""

from __future__ import annotations

import inspect
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from orchestrator import errors as root
from orchestrator.db import create_engine
from orchestrator.migrations import errors
from orchestrator.migrations.errors import ExitCode, Fault, classify, first_line, one_line
from tests.conftest import require_postgres, scratch_postgres_database


def _raised(action) -> BaseException:
    with pytest.raises(Exception) as failure:  # noqa: PT011 - any driver error will do
        action()
    return failure.value


# -- the family ---------------------------------------------------------------------------


def test_every_error_is_one_family_with_an_exit_code():
    classes = [c for module in (root, errors) for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, Exception)]
    assert len(classes) > 20
    for cls in classes:
        assert issubclass(cls, root.OrchestratorError), cls
        assert isinstance(cls.exit_code, ExitCode), cls
    assert errors.SettingsError is root.SettingsError
    assert errors.MigrationLockLost.exit_code == 4
    assert errors.TransientDatabaseError.exit_code == 5
    assert errors.RehearsalCopyError.exit_code == errors.DatabaseUnreachableError.exit_code == 3


def test_exit_codes_keep_their_numbers():
    assert [(code.name, int(code)) for code in ExitCode] == [
        ("OK", 0), ("CHECK_FAILED", 1), ("ERROR", 2), ("UNREACHABLE", 3), ("LOCKED", 4),
        ("TRANSIENT", 5), ("UNEXPECTED", 70), ("INTERRUPTED", 130), ("CLOSED_PIPE", 141)]
    assert ExitCode.DECLINED == 1


def test_first_line_of_an_error_without_a_message():
    assert first_line(ValueError("  \n")) == ""
    assert one_line(ValueError("")) == "ValueError: no message"
    assert first_line(ValueError("one\ntwo")) == "one"


# -- SQLite ---------------------------------------------------------------------------------


def test_sqlite_errors_by_code(tmp_path: Path):
    path = tmp_path / "a.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))

    def run(sql: str):
        with engine.begin() as connection:
            connection.execute(text(sql))

    duplicate = _raised(lambda: run("INSERT INTO t VALUES (1)"))
    assert isinstance(duplicate, sqlalchemy.exc.IntegrityError)
    assert classify(duplicate) is Fault.CONFLICT
    missing = _raised(lambda: run("SELECT * FROM nowhere"))
    assert classify(missing) is Fault.MISSING_SCHEMA
    assert first_line(missing) == "no such table: nowhere"
    assert one_line(missing) == "OperationalError: no such table: nowhere"
    assert classify(_raised(lambda: run("SELEC 1"))) is None  # a bad statement is a bug
    engine.dispose()

    # Another connection holds the write lock: busy, without waiting for it.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
    busy = _raised(lambda: waiter.execute("BEGIN IMMEDIATE"))
    assert busy.sqlite_errorname == "SQLITE_BUSY"
    assert classify(busy) is Fault.TRANSIENT
    holder.execute("ROLLBACK")
    holder.close()
    waiter.close()

    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert classify(_raised(lambda: read_only.execute("INSERT INTO t VALUES (2)"))) is Fault.STORAGE
    read_only.close()
    cannot_open = _raised(lambda: sqlite3.connect(tmp_path / "no" / "such.db"))
    assert classify(cannot_open) is Fault.STORAGE

    (tmp_path / "junk.db").write_bytes(b"not a database, whatever it is" * 100)
    junk = sqlite3.connect(tmp_path / "junk.db")
    assert classify(_raised(lambda: junk.execute("SELECT * FROM sqlite_master"))) is Fault.DAMAGED
    junk.close()


def test_errors_without_a_driver_code_are_not_classified():
    assert classify(ValueError("database is locked")) is None  # not a driver's error
    assert classify(sqlalchemy.exc.DBAPIError("SELECT 1", {}, ValueError("x"))) is None
    # An sqlite3 error built by hand has no result code: SQLite's own wording of one stands in.
    assert classify(sqlite3.OperationalError("database is locked")) is Fault.TRANSIENT
    assert classify(sqlite3.OperationalError("no such table: x")) is None


@pytest.mark.postgres
def test_postgresql_unclassified_sqlstate():
    import psycopg

    assert classify(psycopg.errors.SyntaxError("near x")) is None
    assert classify(psycopg.errors.TooManyConnections("no slots left")) is Fault.UNAVAILABLE


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgresql_errors_by_sqlstate(postgres_url: str):
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))

    def run(*statements: str):
        with engine.connect() as connection:
            for sql in statements:
                connection.execute(text(sql))

    assert classify(_raised(lambda: run("INSERT INTO t VALUES (1)"))) is Fault.CONFLICT
    missing = _raised(lambda: run("SELECT * FROM nowhere"))
    assert classify(missing) is Fault.MISSING_SCHEMA
    assert first_line(missing) == 'relation "nowhere" does not exist'
    assert classify(_raised(lambda: run("SELEC 1"))) is None  # 42601 syntax_error: a bug
    canceled = _raised(lambda: run("SET statement_timeout = 50", "SELECT pg_sleep(5)"))
    assert classify(canceled) is Fault.CANCELED

    # Another session holds the table: lock_timeout gives up on it.
    with engine.connect() as holder:
        holder.execute(text("BEGIN"))
        holder.execute(text("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))
        waited = _raised(lambda: run("SET lock_timeout = 50", "SELECT * FROM t"))
        holder.execute(text("ROLLBACK"))
    assert classify(waited) is Fault.LOCK_TIMEOUT

    # Two serializable transactions that read and write the same row: one cannot commit.
    first = engine.connect().execution_options(isolation_level="SERIALIZABLE")
    second = engine.connect().execution_options(isolation_level="SERIALIZABLE")
    with first.begin(), second.begin():
        first.execute(text("SELECT count(*) FROM t"))
        second.execute(text("SELECT count(*) FROM t"))
        first.execute(text("INSERT INTO t VALUES (10)"))
        conflict = _raised(lambda: (second.execute(text("INSERT INTO t VALUES (11)")),
                                    first.commit(), second.commit()))
    first.close()
    second.close()
    assert getattr(conflict.orig, "sqlstate", None) == "40001"
    assert classify(conflict) is Fault.TRANSIENT

    # The server ends the session (pg_terminate_backend): admin_shutdown, the connection gone.
    victim = engine.connect()
    pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
    run(f"SELECT pg_terminate_backend({pid})")
    ended = _raised(lambda: victim.execute(text("SELECT 1")))
    assert classify(ended) is Fault.ENDED
    victim.invalidate()
    victim.close()
    engine.dispose()


@pytest.mark.postgres
def test_postgresql_deadlock_is_transient(postgres_url: str):
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)"))
        connection.execute(text("INSERT INTO t VALUES (1, 0), (2, 0)"))
    a, b = engine.connect(), engine.connect()
    a.execute(text("BEGIN"))
    b.execute(text("BEGIN"))
    a.execute(text("UPDATE t SET n = 1 WHERE id = 1"))
    b.execute(text("UPDATE t SET n = 1 WHERE id = 2"))
    failures: list[BaseException] = []

    def cross(connection, row: int) -> None:
        try:
            connection.execute(text(f"UPDATE t SET n = 2 WHERE id = {row}"))
        except Exception as exc:  # noqa: BLE001 - the deadlock victim, whichever it is
            failures.append(exc)
        finally:
            connection.execute(text("ROLLBACK"))

    other = threading.Thread(target=cross, args=(a, 2))
    other.start()
    cross(b, 1)
    other.join()
    a.close()
    b.close()
    engine.dispose()
    assert [classify(exc) for exc in failures] == [Fault.TRANSIENT]
    assert failures[0].orig.sqlstate == "40P01"


@pytest.mark.postgres
def test_postgresql_cannot_connect():
    admin = require_postgres()
    with scratch_postgres_database(admin) as url:
        pass  # created and dropped: the name is free
    engine = create_engine(url)
    gone = _raised(engine.connect)
    engine.dispose()
    assert gone.orig.sqlstate is None  # psycopg has none for a failed connection
    assert classify(gone) is Fault.UNAVAILABLE
