"""The PostgreSQL migration lock: a session-level advisory lock on a dedicated autocommit
connection, released with a NOTIFY that wakes the waiters, and `MIGRATING_KEY`, held by the
connection that migrates; the session settings that keep the server from ending them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from orchestrator.migrations.errors import ConnectionLostError, MigrationLockTimeout, one_line
import orchestrator.migrations.lock.waiting as waiting
from orchestrator.migrations.lock.waiting import Notify, StillNeeded
from orchestrator.migrations.lock.watch import Watch

# An arbitrary constant shared by every Orchestrator migrator ("orch" in ASCII).
ADVISORY_LOCK_KEY = 0x6F726368
# Held by the connection that runs the migration, for as long as it migrates (see the package's
# docstring).
MIGRATING_KEY = ADVISORY_LOCK_KEY + 1
# libpq's TCP keepalives for migration sessions: a peer that vanished (a network cut, a host
# gone) is noticed in about 25 s, instead of the operating system's two hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}
# What `protect_session` runs: the session-wide settings hold after the statement's transaction.
PROTECT_SESSION_SQL = (
    "SELECT set_config('idle_in_transaction_session_timeout', '0', false), "
    "CASE WHEN current_setting('server_version_num')::int >= 140000 "
    "THEN set_config('idle_session_timeout', '0', false) END"
)
# The holder NOTIFYs this channel when it lets go of the advisory lock.
RELEASE_CHANNEL = "orchestrator_migration_lock"


@contextlib.contextmanager
def advisory_lock(
    connection,
    timeout: float,
    notify: Notify | None = None,
    still_needed: StillNeeded | None = None,
    watch: Watch | None = None,
) -> Iterator[bool]:
    """Hold PostgreSQL's advisory lock on `connection` for the block; yields whether held.

    The connection is switched to autocommit: it never holds a transaction, hence no snapshot,
    and each statement costs one round trip (no COMMIT). `watch` is told how to see that the
    lock is still held.
    """
    connection.execution_options(isolation_level="AUTOCOMMIT")
    protect_session(connection)
    listening = False

    def try_once() -> bool:
        return bool(
            connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            ).scalar()
        )

    def try_acquire() -> bool:
        nonlocal listening
        if try_once():
            return True
        if listening:
            return False
        # First refusal: listen for the holder's release, then look again, since a release
        # just before LISTEN sent us nothing.
        connection.execute(text(f"LISTEN {RELEASE_CHANNEL}"))
        listening = True
        return try_once()

    def wait_for_release(seconds: float) -> None:
        for _ in connection.connection.driver_connection.notifies(timeout=seconds, stop_after=1):
            pass

    def describe_holder() -> str:
        row = connection.execute(
            text(
                "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :key "
                # Advisory locks are per database; other databases on the server don't count.
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"key": ADVISORY_LOCK_KEY},
        ).first()
        if row is None:  # pragma: no cover - the holder let go between our two queries
            return "another migrator"
        name, addr, backend = row
        return name or f"server backend {backend} from {addr or 'local socket'}"

    held = False
    try:
        held = waiting.wait_for_lock(try_acquire, wait_for_release, describe_holder, timeout,
                                     notify, still_needed)
    except Exception as exc:
        if not _session_ended(connection, exc):
            raise
        # A waiter's session ended (a DBA, a pooler, a restart): nothing was done yet.
        raise ConnectionLostError(
            f"the database ended the session waiting for the migration lock ({_describe(exc)}); "
            "nothing was done; run the command again (`--retries N` reconnects and waits "
            "again by itself)"
        ) from exc
    finally:
        if listening and not held:
            # A pooled connection must not go on collecting notifications; closing it costs
            # no round trip, where UNLISTEN would cost one to each waiter leaving at once.
            connection.invalidate()
    if not held:
        yield False
        return
    if watch is not None:
        watch.check = lambda: _lost_session(connection.connection.driver_connection)
    try:
        yield True
    finally:
        try:
            # Waiters are woken by the notification, sent as this statement ends.
            connection.execute(
                text("SELECT pg_advisory_unlock(:key), pg_notify(:channel, '')"),
                {"key": ADVISORY_LOCK_KEY, "channel": RELEASE_CHANNEL},
            )
            if listening:
                connection.execute(text(f"UNLISTEN {RELEASE_CHANNEL}"))
        except DBAPIError:
            # The session is gone (which is how the lock was lost), and the lock with it;
            # waiters see it free at their next look.
            connection.invalidate()


def protect_session(connection) -> None:
    """Keep the server from ending a session of ours for sitting idle (a managed server's
    `idle_session_timeout`, PostgreSQL 14 and later, or `idle_in_transaction_session_timeout`):
    the lock's session is idle for as long as the migration runs, and the migration's while
    a backup is taken."""
    connection.exec_driver_sql(PROTECT_SESSION_SQL)


def protect_new_session(dbapi_connection, _record=None) -> None:
    """`protect_session` as an engine's "connect" event: every session of the engine, pooled
    ones idle between two uses included."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(PROTECT_SESSION_SQL)
    dbapi_connection.commit()


@contextlib.contextmanager
def migrating(connection, timeout: float) -> Iterator[bool]:
    """Hold `MIGRATING_KEY` on the connection that migrates, for the block (PostgreSQL); yields
    whether it had to wait for it.

    The migration lock's holder takes it once it holds the lock. It is still held by another
    only while a migrator that lost the lock is stopping (its session outlived its lock's): the
    wait is for that migrator's last statement to end, since it might otherwise commit.
    """
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        taken = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATING_KEY}).scalar()
        # No transaction left open while waiting: it would hold a snapshot that a stopping
        # migrator's CREATE INDEX CONCURRENTLY would wait for.
        connection.commit()
        if taken:
            break
        if time.monotonic() >= deadline:
            raise MigrationLockTimeout(
                f"a migrator that lost the migration lock was still running a migration after "
                f"{timeout:g}s; find it (`SELECT * FROM pg_locks WHERE objid = {MIGRATING_KEY}`) "
                "and wait for it to stop, then retry"
            )
        waited = True
        time.sleep(waiting.RECHECK_SECONDS)
    try:
        yield waited
    finally:
        if connection.invalidated:
            return  # noqa: B012 - the session is gone, and the key with it; the error stands
        try:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATING_KEY})
            connection.commit()
        except DBAPIError:
            # The session is gone, and the key with it.
            connection.invalidate()


def _session_ended(connection, exc: BaseException) -> bool:
    """Whether `exc` came from the connection's session ending, as SQLAlchemy saw it (a
    statement) or as the driver did (waiting for a notification on its socket)."""
    if getattr(exc, "connection_invalidated", False) or connection.invalidated:
        return True
    return bool(connection.connection.driver_connection.closed)


def _describe(exc: BaseException) -> str:
    """The driver's error as `Type: first line`."""
    return one_line(exc)


def _lost_session(driver_connection) -> str | None:
    """Why the lock's session no longer holds the lock, or None while it does."""
    try:
        row = driver_connection.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0 "
            "AND objid = %s AND objsubid = 1 AND pid = pg_backend_pid()",
            (ADVISORY_LOCK_KEY,),
        ).fetchone()
    except Exception as exc:  # noqa: BLE001 - whatever it is, the lock cannot be shown held
        return f"its session ended: {one_line(exc)}"
    return None if row is not None else "the server no longer lists it as held"
