"""The manager's connections: the engine, one connection at a time, and the migration lock
(lock.py) held around a command, on a connection of its own (PostgreSQL) or by a lock file
(SQLite)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from orchestrator.db import create_engine, sqlite_path
from orchestrator.migrations import lock
from orchestrator.migrations.errors import DatabaseUnreachableError, Fault, classify, first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine


class Connections:
    """`MigrationManager`'s engine (`_engine`, made on first use) and migration lock
    (`_lock_connection`, `_lock_held`, `_watch`, `lock_wait`)."""

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            connect_args: dict[str, Any] = {}
            if self.dialect == "postgresql":
                connect_args = {
                    "application_name": f"orchestrator-migrate {lock.holder_description()}",
                    "connect_timeout": 10,
                    **lock.KEEPALIVES,
                }
            self._engine = create_engine(self.database_url, connect_args=connect_args)
            if self.dialect == "postgresql":
                event.listen(self._engine, "connect", lock.protect_new_session)
        return self._engine

    @contextlib.contextmanager
    def _connect(self, create: bool = False) -> Iterator[Connection]:
        """A connection; for SQLite, `create` allows making a missing file."""
        path = sqlite_path(self.database_url)
        if path is not None:
            if not create and not path.exists():  # pragma: no cover - callers check first
                raise DatabaseUnreachableError(f"{path} does not exist")
        try:
            connection = self.engine.connect()
        except DBAPIError as exc:
            raise self._unreachable(exc) from exc
        except ImportError as exc:
            raise DatabaseUnreachableError(
                f"the driver for {self.masked_url} is not installed ({exc.name}); "
                "use postgresql+psycopg:// or sqlite:///, or install the driver"
            ) from exc
        with connection:
            yield connection

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection to read the revision with: while the migration lock is held or awaited
        on PostgreSQL, the lock's own (a waiter then costs the server one session, not two)."""
        if self._lock_connection is None:
            with self._connect() as connection:
                yield connection
            return
        # In autocommit (see lock.advisory_lock): each read ends with its statement.
        yield self._lock_connection

    def _unreachable(self, exc: Exception) -> DatabaseUnreachableError:
        reason = first_line(exc)
        if classify(exc) is Fault.DAMAGED:
            return DatabaseUnreachableError(
                f"the database file {sqlite_path(self.database_url)} is damaged ({reason}); "
                "restore a backup: `orchestrator db backups`, then `orchestrator db restore FILE`"
            )
        return DatabaseUnreachableError(
            f"cannot reach the database at {self.masked_url}: {reason}; "
            "check DATABASE_URL and that the server is running"
        )

    @contextlib.contextmanager
    def _migration_lock(self, still_needed: lock.StillNeeded | None = None) -> Iterator[bool]:
        """Hold the migration lock; yields False when `still_needed` ended the wait unheld.

        Sets `lock_wait` to the seconds spent getting it (or giving up on it)."""
        with self._locked(still_needed) as held:
            self._lock_held = held
            try:
                yield held
            finally:
                self._lock_held = False

    @contextlib.contextmanager
    def _locked(self, still_needed: lock.StillNeeded | None) -> Iterator[bool]:
        path = sqlite_path(self.database_url)
        started = time.perf_counter()
        self._watch = lock.Watch()
        if path is not None:
            if not path.parent.exists():
                raise DatabaseUnreachableError(
                    f"cannot create {path}: the folder {path.parent} does not exist; "
                    "create it or fix DATABASE_URL"
                )
            with lock.file_lock(
                lock.lock_file_for(path), self.lock_timeout, self.notify, still_needed,
                watch=self._watch,
            ) as held:
                self.lock_wait = time.perf_counter() - started
                yield held
            return
        with self._connect() as connection:
            self._lock_connection = connection
            try:
                with lock.advisory_lock(
                    connection, self.lock_timeout, self.notify, still_needed, watch=self._watch
                ) as held:
                    self.lock_wait = time.perf_counter() - started
                    yield held
            finally:
                self._lock_connection = None
