"""Whether a held migration lock is still held, asked before each commit and, on a helper
thread, every `_WATCH_SECONDS` while a statement runs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from orchestrator.migrations.errors import MigrationLockLost

# How often a running migration asks whether its lock is still held.
_WATCH_SECONDS = 0.5


class Watch:
    """Whether the migration lock is still held, asked while a migration runs.

    The lock tells it how to ask (`check`, set by `file_lock` or `advisory_lock` once held); the
    manager asks before each commit (`verify`), and `watching` asks every `_WATCH_SECONDS` on a
    helper thread, stopping the running statement once the lock is lost.
    """

    def __init__(self) -> None:
        self.check: Callable[[], str | None] | None = None
        # Why the lock was lost, once it was.
        self.lost: str | None = None
        self._mutex = threading.Lock()

    def verify(self) -> None:
        """Raise `MigrationLockLost` unless the lock is held at this moment."""
        with self._mutex:
            if self.lost is None and self.check is not None:
                self.lost = self.check()
        self.refuse_if_lost()

    def refuse_if_lost(self) -> None:
        """Raise `MigrationLockLost` if the lock was found lost (asks nothing)."""
        if self.lost is not None:
            raise MigrationLockLost(f"lost the migration lock ({self.lost})")

    @contextlib.contextmanager
    def watching(self, stop_statement: Callable[[], None]) -> Iterator[None]:
        """Ask on a helper thread for the block; `stop_statement` once the lock is lost."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(_WATCH_SECONDS):
                try:
                    self.verify()
                except MigrationLockLost:
                    stop_statement()
                    return

        thread = threading.Thread(target=watch, name="migration-lock-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
