"""The SQLite migration lock: an exclusive `flock` on a file beside the database, which the
operating system lets go when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.migrations.errors import DatabaseUnreachableError
from orchestrator.migrations.lock.waiting import (
    Notify,
    StillNeeded,
    holder_description,
    wait_for_lock,
)
from orchestrator.migrations.lock.watch import Watch

# How often a SQLite waiter probes the lock file for a release (a non-blocking flock).
_PROBE_SECONDS = 0.002


def lock_file_for(database: Path) -> Path:
    """The lock file of a SQLite database: beside it, named after it."""
    return database.with_name(database.name + ".migrate.lock")



@contextlib.contextmanager
def file_lock(
    path: Path,
    timeout: float,
    notify: Notify | None = None,
    still_needed: StillNeeded | None = None,
    watch: Watch | None = None,
) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the block; yields whether held.

    The lock is the file at `path`: a lock taken on a file that was removed or replaced since it
    was opened guards nothing, so it is let go and the file now at `path` is tried instead.
    `watch` is told how to see that the file is still the one locked.
    """
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        if still_needed is not None and not still_needed():
            # Nothing to do needs no lock: an up-to-date database in a read-only folder is fine.
            yield False
            return
        raise DatabaseUnreachableError(
            f"cannot create the migration lock file {path}: {exc.strerror}; "
            "check that the database's folder exists and is writable"
        ) from None
    opened = [handle]

    def try_acquire() -> bool:
        while _try_flock(opened[-1], fcntl.LOCK_EX):
            if _lost_file(path, opened[-1]) is None:
                return True
            # Removed or replaced after we opened it: whoever locks the file at `path` now
            # holds the lock, so that is the one to take.
            fcntl.flock(opened[-1], fcntl.LOCK_UN)
            opened.append(open(path, "a+"))  # noqa: SIM115 - closed with the others below
        return False

    def wait_for_release(seconds: float) -> None:
        # A shared lock is granted only while nobody holds the exclusive one.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(_PROBE_SECONDS)
            if _try_flock(opened[-1], fcntl.LOCK_SH):
                fcntl.flock(opened[-1], fcntl.LOCK_UN)
                return

    with contextlib.ExitStack() as files:
        files.callback(lambda: [each.close() for each in opened])
        held = wait_for_lock(
            try_acquire=try_acquire,
            wait_for_release=wait_for_release,
            describe_holder=lambda: _read_holder(path),
            timeout=timeout,
            notify=notify,
            still_needed=still_needed,
        )
        if not held:
            yield False
            return
        handle = opened[-1]
        if watch is not None:
            watch.check = lambda: _lost_file(path, handle)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(holder_description())
            handle.flush()
            yield True
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lost_file(path: Path, handle) -> str | None:
    """Why the lock taken on `handle` no longer guards `path`, or None while it does."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return f"its lock file {path} was removed"
    locked = os.fstat(handle.fileno())
    if (now.st_dev, now.st_ino) != (locked.st_dev, locked.st_ino):
        return f"its lock file {path} was replaced"
    return None


def file_lock_taken(path: Path) -> bool:
    """Whether some process holds the lock file's exclusive lock now (a missing file: no)."""
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        if not _try_flock(handle, fcntl.LOCK_SH):
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _try_flock(handle, kind: int) -> bool:
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another migrator"
    except OSError:  # pragma: no cover - the file vanished between two calls
        return "another migrator"
