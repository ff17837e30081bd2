"""Where the database stands against the scripts, read without changing anything: its
revision (or none: fresh, unversioned, or a revision the scripts do not know), the step a
killed migration left unfinished, and whether new sessions are read-only by default; with
the values `status()` and `history()` return."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from orchestrator.db import sqlite_path
from orchestrator.migrations import backup, history, lock, version
from orchestrator.migrations.errors import (
    DatabaseAheadError,
    Fault,
    MigrationError,
    MultipleHeadsError,
    UnversionedDatabaseError,
    classify,
)
from orchestrator.migrations.version import BOOKKEEPING_TABLES, SELECT_VERSION_SQL, VERSION_TABLE

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


@dataclass(frozen=True)


class InterruptedStep:
    """A revision step that started and did not finish: the process was killed or
    interrupted midway (or, when `running`, a migration may still be running it)."""

    revision: str
    direction: str
    started_at: datetime.datetime
    # Another process holds the migration lock now: the step may still be in progress.
    running: bool = False

    def describe(self) -> str:
        """One line: what happened and the command that completes it."""
        started = f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC"
        if self.running:
            return (f"{self.direction} of {self.revision} started at {started} and has not "
                    "finished: another process holds the migration lock and may still be "
                    "running it")
        return (f"{self.direction} of {self.revision} started at {started} and did not finish "
                f"(interrupted); {self.remedy}")

    @property
    def remedy(self) -> str:
        """What to do about it: wait for the process running it, or the command completing it."""
        if self.running:
            return "wait for the process that holds the migration lock"
        command = ("`orchestrator db upgrade`" if self.direction == "upgrade"
                   else "the same `orchestrator db downgrade` again")
        return f"run {command} to complete it"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": self.started_at.isoformat()}


@dataclass(frozen=True)


class MigrationStatus:
    """Where the database stands against the scripts."""

    current: str | None
    head: str | None
    pending: tuple[str, ...]
    database_exists: bool = True
    # The database has tables but no revision: it was not made by these migrations, or its
    # version table was emptied (`db stamp base` over a schema, or by hand).
    unversioned: bool = False
    # The database is at a revision these scripts do not know (newer code migrated it).
    ahead: bool = False
    # The newest recorded step started and did not finish: part of its work may be done.
    interrupted: InterruptedStep | None = None
    # PostgreSQL: new sessions are read-only by default (`ALTER DATABASE ... SET
    # default_transaction_read_only = on`), as a restore leaves it when it is killed midway.
    read_only: bool = False

    @property
    def up_to_date(self) -> bool:
        return (not self.ahead and not self.unversioned and self.interrupted is None
                and self.current == self.head)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "pending": list(self.pending),
            "up_to_date": self.up_to_date,
            "interrupted": self.interrupted.as_dict() if self.interrupted else None,
        }


@dataclass(frozen=True)


class RevisionInfo:
    """One script in the chain, oldest first."""

    revision: str
    down_revision: str | None
    message: str
    path: str
    applied: bool
    is_head: bool


class DatabaseState:
    """`MigrationManager`'s reading of the database (on `_reading()`/`_connect()`)."""

    def get_current_revision(self) -> str | None:
        """The database's revision (None for a fresh or missing database)."""
        return self._read_database()[0]

    def recorded_revision(self) -> tuple[str | None, dict[str, str]]:
        """The database's revision, and the checksum of the script its history says was last
        applied (or stamped) as each revision: read without loading the scripts, which may
        not load (two branches' migrations with one id, before `db rebase`)."""
        current = self._read_database()[0]
        if current is None:
            return None, {}
        with self._connect() as connection:
            entries = history.read(connection)
        checksums = {entry.revision: entry.checksum for entry in entries
                     if entry.success and entry.direction in (history.UPGRADE, history.STAMP)
                     and entry.checksum is not None}
        return current, checksums

    def status(self) -> MigrationStatus:
        """Current, head and pending revisions, without changing anything."""
        head = self.get_head_revision()
        current, exists, unversioned, interrupted, read_only = self._read_database(
            with_history=True)
        if current is not None and current not in self.chain:
            return MigrationStatus(current, head, (), exists, ahead=True, interrupted=interrupted,
                                   read_only=read_only)
        return MigrationStatus(current, head, self.chain.upgrade_steps(current, head), exists,
                               unversioned, interrupted=interrupted, read_only=read_only)

    def require_known_database(self, status: MigrationStatus | None = None) -> MigrationStatus:
        """`status` (read now when not given); raises when the database is ahead of these scripts
        (`DatabaseAheadError`) or has tables but no revision (`UnversionedDatabaseError`)."""
        status = status or self.status()
        if status.ahead:
            raise DatabaseAheadError(
                f"{DatabaseAheadError.describe(status.current)}; "
                f"deploy the code that has {status.current}, or if it was abandoned run "
                f"`orchestrator db stamp {status.head}` after checking the schema"
            )
        if status.unversioned:
            raise UnversionedDatabaseError(
                f"{self.masked_url} has tables but no migration revision; if its schema matches "
                "a revision, record it with `orchestrator db stamp <revision>` "
                "(e.g. `orchestrator db stamp head`)"
            )
        return status

    def _read_database(
        self, with_history: bool = False
    ) -> tuple[str | None, bool, bool, InterruptedStep | None, bool]:
        """(current revision, database exists, has tables but no revision; with
        `with_history`: the step that was interrupted, if the newest recorded one was, and
        whether new sessions are read-only by default)."""
        path = sqlite_path(self.database_url)
        if path is not None and not path.exists():
            # Made now (no file is touched before a connection): a waiter that finds no
            # database yet reads it the moment the holder lets go, with nothing left to set up.
            self.engine  # noqa: B018
            return None, False, False, None, False
        with self._reading() as connection:
            rows = self._version_rows(connection)
            if rows is None:  # no version table: a fresh or an unversioned database
                tables = self._table_names(connection)
                if VERSION_TABLE not in tables:
                    return (None, True, bool(tables - {"migration_history"}), None,
                            with_history and self._read_only(connection))
                # Each statement sees its own snapshot (READ COMMITTED): another migrator
                # committed its first revision between our two reads. Read the version again
                # rather than report an "unversioned" database.
                rows = self._version_rows(connection) or []
            unversioned = False
            if not rows:
                # An empty version table over tables is no more a revision than a missing one.
                # Tables first, then the version again: another migrator may commit its first
                # revision (tables and version row together) between our statements, each of
                # which sees its own snapshot (READ COMMITTED).
                tables = self._table_names(connection) - BOOKKEEPING_TABLES
                rows = self._version_rows(connection) or []
                unversioned = not rows and bool(tables)
            interrupted = self._interrupted_step(connection) if with_history else None
            read_only = with_history and self._read_only(connection)
        if len(rows) > 1:
            versions = ", ".join(sorted(r[0] for r in rows))
            raise MultipleHeadsError(
                f"the database records several revisions ({versions}); "
                "stamp the right one with `orchestrator db stamp <revision>`"
            )
        return (rows[0][0] if rows else None), True, unversioned, interrupted, read_only

    def _table_names(self, connection: Connection) -> set[str]:
        return version.table_names(connection, self.dialect)

    def _interrupted_step(self, connection: Connection) -> InterruptedStep | None:
        """The newest recorded step, if it started and did not finish."""
        try:
            last = history.interrupted_step(connection)
        except DBAPIError:  # no history table (or none this role may read): nothing to tell
            connection.rollback()
            return None
        if last is None:
            return None
        return InterruptedStep(last.revision, last.direction, last.started_at,
                               running=self._lock_taken(connection))

    def _read_only(self, connection: Connection) -> bool:
        """Whether the database makes new sessions read-only by default (PostgreSQL)."""
        if self.dialect != "postgresql":
            return False
        return backup.read_only_by_default(backup.read_only_setting(connection))

    def make_writable_statement(self) -> str:
        """PostgreSQL: what the database's owner runs to make its new sessions writable."""
        name = make_url(self.database_url).database
        return backup.make_writable(self.engine.dialect.identifier_preparer.quote(name))

    def _lock_taken(self, connection: Connection) -> bool:
        """Whether another process holds the migration lock (we do not, when asking)."""
        if self._lock_held:
            return False
        path = sqlite_path(self.database_url)
        if path is not None:
            return lock.file_lock_taken(lock.lock_file_for(path))
        return bool(connection.execute(text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND pid <> pg_backend_pid()"), {"key": lock.ADVISORY_LOCK_KEY}).first())

    def _version_rows(self, connection: Connection) -> list | None:
        """The version table's rows, or None when the table does not exist."""
        try:
            return list(connection.execute(text(SELECT_VERSION_SQL)).all())
        except Exception as exc:
            if not _is_missing_table(exc):
                raise self._unreachable(exc) from exc
            connection.rollback()
            return None

    def _revision_now(self) -> str | None:
        """The database's revision read afresh, or None when it cannot be read."""
        try:
            with self._connect() as connection:
                rows = self._version_rows(connection)
        except MigrationError:
            return None
        return rows[0][0] if rows else "base"


def _is_missing_table(exc: Exception) -> bool:
    return classify(exc) is Fault.MISSING_SCHEMA
