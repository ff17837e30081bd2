"""Waiting for the migration lock, whichever kind: a first try, then a helper thread at the
lowest CPU priority that sleeps until the holder lets go (or `RECHECK_SECONDS` pass), asks
`still_needed`, and tries again until the timeout."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from orchestrator.migrations.errors import MigrationLockTimeout

# How often a waiter looks again without having seen a release (read at each wait: tests
# lower or raise it).
RECHECK_SECONDS = 0.25

Notify = Callable[[str], None]
# Asked between two tries while waiting: False means the work was done by the holder, and the
# waiter leaves without the lock (the block then runs with `held` False).
StillNeeded = Callable[[], bool]
# Sleeps up to the given seconds, returning early once the holder has let go.
WaitForRelease = Callable[[float], None]


def holder_description() -> str:
    """Who we are, as other waiters will see it."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def wait_for_lock(
    try_acquire: Callable[[], bool],
    wait_for_release: WaitForRelease,
    describe_holder: Callable[[], str],
    timeout: float,
    notify: Notify | None,
    still_needed: StillNeeded | None = None,
) -> bool:
    """Wait for the lock: True once held, False when `still_needed` says it no longer is."""
    if try_acquire():
        return True
    outcome: dict[str, object] = {}
    stop, done = threading.Event(), threading.Event()

    def wait() -> None:
        _lower_priority()
        try:
            outcome["held"] = _wait_for_turn(
                try_acquire, wait_for_release, describe_holder, timeout, notify, still_needed, stop
            )
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=wait, name="migration-lock-waiter", daemon=True).start()
    try:
        done.wait()
    except BaseException:
        # Interrupted (Ctrl-C): the helper stops at its next wake, before the caller closes the
        # file or connection it uses (which lets go of the lock, had the helper just taken it).
        # An Event, not join(): an interrupted join() may report a live thread as finished.
        stop.set()
        done.wait()
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return bool(outcome["held"])


def _wait_for_turn(
    try_acquire: Callable[[], bool],
    wait_for_release: WaitForRelease,
    describe_holder: Callable[[], str],
    timeout: float,
    notify: Notify | None,
    still_needed: StillNeeded | None,
    stop: threading.Event,
) -> bool:
    deadline = time.monotonic() + timeout
    told = False
    while not stop.is_set():
        # Asked before each try, so that waiters woken by a release whose work is done leave
        # together instead of taking the lock in turn to find nothing to do.
        if still_needed is not None and not still_needed():
            return False
        if try_acquire():
            return True
        remaining = deadline - time.monotonic()
        # Who holds it is asked only when it is said: on PostgreSQL that is a pg_locks query.
        if remaining <= 0:
            raise MigrationLockTimeout(
                f"another migration ({describe_holder()}) held the migration lock for more "
                f"than {timeout:g}s; wait for it to finish and retry, or raise --lock-timeout "
                "(MIGRATION_LOCK_TIMEOUT)"
            )
        if not told and notify is not None:
            notify(
                f"waiting for the migration lock held by {describe_holder()} "
                f"(up to {timeout:g}s)"
            )
            told = True
        wait_for_release(min(RECHECK_SECONDS, remaining))
    return False


def _lower_priority() -> None:
    """Nice 19 for the calling thread only: Linux applies nice per thread (elsewhere the id
    given would name a process, so nothing is changed)."""
    if sys.platform.startswith("linux"):  # pragma: no branch - the project runs on Linux
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
