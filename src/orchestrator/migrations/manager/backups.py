"""The manager's backups (migrations/backup.py): taken on demand, before an upgrade or
downgrade when one is due, and restored under the migration lock."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.db import sqlite_path
from orchestrator.migrations import backup
from orchestrator.migrations.errors import (
    BackupError,
    DatabaseUnreachableError,
    MultipleHeadsError,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.migrations.backup import BackupInfo, Progress, RestoreReport


logger = logging.getLogger(__name__)


class Backups:
    """`MigrationManager`'s backups, in `backup_dir`, kept newest first up to `backup_keep`."""

    def backup(
        self, output: str | Path | None = None, *, progress: Progress | None = None
    ) -> BackupInfo:
        """Back up the database (to `output`, or into the backup folder); returns `BackupInfo`."""
        return self._backup("manual", Path(output) if output else None, progress)

    def backups(self) -> list[BackupInfo]:
        """This database's backups in the backup folder (`BackupInfo`), newest first."""
        return backup.list_backups(self.database_url, self.backup_dir)

    def restore(
        self,
        path: str | Path,
        *,
        progress: Progress | None = None,
        other_database: bool = False,
    ) -> RestoreReport:
        """Replace the database with a backup, after backing up its current state; no other
        connection can commit from the start of that backup until the restore is done.

        A backup of another database (by its sidecar) is refused unless `other_database`.
        """
        path = Path(path)
        checked = backup.restorable(self.database_url, path, other_database=other_database)
        with self._migration_lock():
            # What the database holds does not matter (nor do the scripts): only whether there
            # is one to keep, and whether SQLite can read it.
            try:
                exists = self._read_database()[1]
            except MultipleHeadsError:
                exists = True
            except DatabaseUnreachableError:
                if self.dialect != "sqlite" or backup.sqlite_damage(self.database_url) is None:
                    raise
                return self._restore_over_damage(checked)
            self.close()
            report = backup.restore(
                self.database_url,
                path,
                progress=progress or self.backup_progress,
                checked=checked,
                safety_dir=self.backup_dir if exists else None,
                notify=self.notify,
                spare=self._own_sessions(),
            )
            backup.prune(self.database_url, self.backup_dir, self.backup_keep, exclude=[path])
        return report

    def _own_sessions(self) -> list[int]:
        """PostgreSQL sessions of ours that a restore must not end: the migration lock's."""
        if self._lock_connection is None:
            return []
        return [self._lock_connection.connection.driver_connection.info.backend_pid]

    def _restore_over_damage(self, checked: BackupInfo) -> RestoreReport:
        """A SQLite file too damaged to read: keep its bytes, then put the backup in its place."""
        self.close()
        safety = backup.create(
            self.database_url, backup_dir=self.backup_dir, reason="damaged", damaged=True
        )
        logger.warning("the database file was damaged; its bytes were kept in %s", safety.path)
        restored = backup.replace_damaged_sqlite(self.database_url, checked)
        backup.prune(self.database_url, self.backup_dir, self.backup_keep, exclude=[checked.path])
        current, _, unversioned, _, _ = self._read_database()
        return backup.RestoreReport(restored, safety, current, unversioned)

    def _backup(
        self, reason: str, output: Path | None, progress: Progress | None, prune: bool = True
    ) -> BackupInfo:
        if not self._read_database()[1]:  # the scripts are not needed, nor loaded
            raise backup.BackupError(
                f"nothing to back up: {sqlite_path(self.database_url)} does not exist yet"
            )
        info = backup.create(
            self.database_url,
            backup_dir=self.backup_dir,
            output=output,
            reason=reason,
            progress=progress or self.backup_progress,
        )
        if prune and output is None:
            backup.prune(self.database_url, self.backup_dir, self.backup_keep)
        return info

    def _wants_backup(self) -> bool:
        """Whether an upgrade or downgrade takes a backup first: when enabled, and when there
        is something to lose."""
        return self.backup_before_migrate and self.get_current_revision() is not None

    def _backup_before(
        self, action: str, for_loss: bool, take: Callable[[], BackupInfo]
    ) -> BackupInfo:
        """Take the automatic backup before an upgrade or downgrade: without it, no change.
        `for_loss`: taken because data would be lost, not because the setting asks for it."""

        try:
            self.last_backup = take()
        except BackupError as exc:
            if for_loss:
                raise type(exc)(
                    f"{exc} (no {action} that destroys data without a backup taken before it;"
                    " make room for it, or set BACKUP_DIR to a writable folder)"
                ) from exc
            raise type(exc)(
                f"{exc} (no {action} without the backup taken before it; to go without, "
                "set BACKUP_BEFORE_MIGRATE=false)"
            ) from exc
        return self.last_backup

    def _begin_with_backup(
        self, connection: Connection, held: contextlib.ExitStack, action: str, for_loss: bool
    ) -> BackupInfo:
        """SQLite: begin the transaction the whole command runs in, with the write lock taken
        first, and back the database up under it."""
        path = sqlite_path(self.database_url)
        # Opened before the lock is taken, closed after it is let go (see backup.sqlite.backup_sqlite).
        data = held.enter_context(open(path, "rb"))
        self._begin_writing(connection, action)
        wal = connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        info = self._backup_before(action, for_loss, lambda: backup.create_held(
            self.database_url, data, wal, backup_dir=self.backup_dir,
            reason=f"before-{action}", progress=self.backup_progress))
        backup.prune(self.database_url, self.backup_dir, self.backup_keep)
        return info
