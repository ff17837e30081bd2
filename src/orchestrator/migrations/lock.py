"""One migrator at a time, across processes and hosts.

PostgreSQL: a session-level advisory lock on a dedicated connection. SQLite: an exclusive
`flock` on a file beside the database. Both are polled with short transactions: a waiter
blocked inside `pg_advisory_lock` would hold a snapshot open, and `CREATE INDEX CONCURRENTLY`
(migration 003) waits for every such snapshot to end, so the holder would stall on its waiters. Either way the operating system or the server releases
the lock when the holder dies, so a killed migrator never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.migrations.errors import DatabaseUnreachableError, MigrationLockTimeout

# An arbitrary constant shared by every Orchestrator migrator ("orch" in ASCII).
ADVISORY_LOCK_KEY = 0x6F726368
_POLL_SECONDS = 0.02

Notify = Callable[[str], None]
# Asked between two tries while waiting: False means the work was done by the holder, and the
# waiter leaves without the lock (the block then runs with `held` False).
StillNeeded = Callable[[], bool]


def holder_description() -> str:
    """Who we are, as other waiters will see it."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@contextlib.contextmanager
def file_lock(
    path: Path,
    timeout: float,
    notify: Notify | None = None,
    still_needed: StillNeeded | None = None,
) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the block; yields whether held."""
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        raise DatabaseUnreachableError(
            f"cannot create the migration lock file {path}: {exc.strerror}; "
            "check that the database's folder exists and is writable"
        ) from None
    with handle:
        held = _wait(
            try_acquire=lambda: _try_flock(handle),
            describe_holder=lambda: _read_holder(path),
            timeout=timeout,
            notify=notify,
            still_needed=still_needed,
        )
        if not held:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(holder_description())
            handle.flush()
            yield True
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def advisory_lock(
    connection,
    timeout: float,
    notify: Notify | None = None,
    still_needed: StillNeeded | None = None,
) -> Iterator[bool]:
    """Hold PostgreSQL's advisory lock on `connection` for the block; yields whether held."""
    from sqlalchemy import text

    def try_acquire() -> bool:
        got = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        ).scalar()
        connection.commit()
        return bool(got)

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
        connection.commit()
        if row is None:  # pragma: no cover - the holder let go between our two queries
            return "another migrator"
        name, addr, backend = row
        return name or f"server backend {backend} from {addr or 'local socket'}"

    if not _wait(try_acquire, describe_holder, timeout, notify, still_needed):
        yield False
        return
    try:
        yield True
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()


def _wait(
    try_acquire: Callable[[], bool],
    describe_holder: Callable[[], str],
    timeout: float,
    notify: Notify | None,
    still_needed: StillNeeded | None = None,
) -> bool:
    """Wait for the lock: True once held, False when `still_needed` says it no longer is."""
    deadline = time.monotonic() + timeout
    told = False
    while not try_acquire():
        if still_needed is not None and not still_needed():
            return False
        # Who holds it is asked only when it is said: on PostgreSQL that is a pg_locks query,
        # too heavy to repeat on every poll while the holder migrates.
        if time.monotonic() >= deadline:
            raise MigrationLockTimeout(
                f"another migration ({describe_holder()}) held the migration lock for more "
                f"than {timeout:g}s; wait for it to finish and retry, or raise --lock-timeout"
            )
        if not told and notify is not None:
            notify(
                f"waiting for the migration lock held by {describe_holder()} "
                f"(up to {timeout:g}s)"
            )
            told = True
        time.sleep(_POLL_SECONDS)
    return True


def _try_flock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another migrator"
    except OSError:  # pragma: no cover - the file vanished between two calls
        return "another migrator"
