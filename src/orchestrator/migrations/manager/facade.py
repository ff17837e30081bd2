"""MigrationManager: one object over Alembic's API for status, upgrade, downgrade and the rest.

Nothing here prints: results are typed values and failures are `MigrationError`s carrying the
command that fixes them. The CLI, the API's start-up and the tests all go through this class.

This module owns the class's construction and its public commands (reading, planning,
upgrade, downgrade). Each other job is a mixin beside it, and none of them imports this one:
scripts.py loads the scripts, connection.py holds the engine, the connections and the
migration lock, state.py reads where the database stands, run.py runs an Alembic command
under the lock, failures.py says what a failed step reports, backups.py takes backups and
restores them, authoring.py writes new scripts, stamps and renders offline SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command

from orchestrator.db import backend_name, mask_url, normalize_url
from orchestrator.migrations import history, lock
from orchestrator.migrations.chain import is_relative
from orchestrator.migrations.environment import SCRIPT_DIRECTORY
from orchestrator.migrations.errors import (
    IrreversibleMigrationError,
    PastTargetError,
    ScriptsChangedError,
)
from orchestrator.migrations.manager.authoring import Authoring, alembic_config
from orchestrator.migrations.manager.backups import Backups
from orchestrator.migrations.manager.connection import Connections
from orchestrator.migrations.manager.run import Runner
from orchestrator.migrations.manager.scripts import Scripts
from orchestrator.migrations.manager.state import DatabaseState, RevisionInfo
from orchestrator.migrations.preview import DowngradePreview, preview
from orchestrator.settings import Environment

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

    from orchestrator.migrations.backup import BackupInfo
    from orchestrator.migrations.history import ChangedScript, HistoryEntry


class _Planner:
    """Plans a migration to `target` each time it is called, the way a migrator sees it.

    The first plan is `plan`'s own: a target the database is already past is an error. A
    migrator that then waited for the lock may find that another one took the database past
    the target meanwhile: that leaves it nothing to do, not an error.
    """

    def __init__(self, plan: Callable[[str], list[str]], target: str) -> None:
        self._plan = plan
        self._target = target
        self._first = True

    def __call__(self) -> list[str]:
        first, self._first = self._first, False
        try:
            return self._plan(self._target)
        except PastTargetError:
            if first:
                raise
            return []


class MigrationManager(Scripts, Connections, DatabaseState, Runner, Backups, Authoring):
    """Manages the schema of one database with the project's Alembic scripts."""

    def __init__(
        self,
        database_url: str,
        *,
        lock_timeout: float = 300.0,
        db_lock_timeout: str | float = 5.0,
        notify: Callable[[str], None] | None = None,
        progress: Callable[[str, float], None] | None = None,
        script_location: str = SCRIPT_DIRECTORY,
        backup_before_migrate: bool = False,
        backup_dir: str | Path = "backups",
        backup_keep: int = 10,
        environment: Environment | str = Environment.development,
        backup_progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        self.database_url = normalize_url(database_url)
        # Safety net (migrations/backup.py): a backup before each upgrade and downgrade, kept
        # newest first up to `backup_keep`, restored automatically when a SQLite migration fails.
        self.backup_before_migrate = backup_before_migrate
        self.backup_dir = Path(backup_dir)
        self.backup_keep = backup_keep
        # Staging and production refuse to upgrade over applied scripts that were edited.
        self.environment = Environment(environment)
        # Called with (bytes done, bytes in total or None) during long backups and restores.
        self.backup_progress = backup_progress
        # The backup taken by the last upgrade or downgrade, if any.
        self.last_backup: BackupInfo | None = None
        # What the last downgrade destroyed, as read under the migration lock before it ran.
        self.last_preview: DowngradePreview | None = None
        # Another scripts folder serves tests and the validator; the default is the project's.
        self.script_location = script_location
        self.lock_timeout = lock_timeout
        self.db_lock_timeout = db_lock_timeout
        # Called with a one-line message when the manager waits (for the lock, for a retry).
        self.notify = notify
        # Called after each revision step with its id and the seconds it took.
        self.progress = progress
        # Seconds the last command waited for the migration lock (another migrator held it).
        self.lock_wait = 0.0
        self._engine: Engine | None = None
        # The connection holding (or awaiting) the PostgreSQL migration lock, if any.
        self._lock_connection: Connection | None = None
        # Whether this manager holds the migration lock now.
        self._lock_held = False
        # Whether the migration lock is still held (see lock.Watch), while it is.
        self._watch = lock.Watch()

    @classmethod
    def from_settings(cls, settings, **kwargs: Any) -> MigrationManager:
        """A manager configured from `Settings`; `kwargs` override them."""
        options: dict[str, Any] = {
            "lock_timeout": settings.migration_lock_timeout,
            "db_lock_timeout": settings.db_lock_timeout,
            "backup_before_migrate": settings.backup_before_migrate,
            "backup_dir": settings.backup_dir,
            "backup_keep": settings.backup_keep,
            "environment": settings.environment,
        }
        return cls(settings.database_url, **{**options, **kwargs})

    # -- configuration -------------------------------------------------------------------

    @property
    def masked_url(self) -> str:
        return mask_url(self.database_url)

    @property
    def dialect(self) -> str:
        return backend_name(self.database_url)

    @cached_property
    def config(self) -> Config:
        """The Alembic configuration, the same that `alembic.ini` gives the `alembic` command."""
        return alembic_config(self.database_url, script_location=self.script_location,
                              db_lock_timeout=self.db_lock_timeout)

    def close(self) -> None:
        """Release pooled connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> MigrationManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------

    def with_scripts(self, script_location: str | Path) -> MigrationManager:
        """A manager of the same database, with the same options, over another scripts
        folder (`db rebase` undoes a branch's migrations with the scripts as they were)."""
        return MigrationManager(
            self.database_url,
            lock_timeout=self.lock_timeout,
            db_lock_timeout=self.db_lock_timeout,
            notify=self.notify,
            progress=self.progress,
            script_location=str(script_location),
            backup_before_migrate=self.backup_before_migrate,
            backup_dir=self.backup_dir,
            backup_keep=self.backup_keep,
            environment=self.environment,
            backup_progress=self.backup_progress,
        )

    def pending_revisions(self) -> list[str]:
        """Revisions the database lacks, in the order they would be applied."""
        return list(self.status().pending)

    def needs_migration(self) -> bool:
        """True when the database is not at head."""
        return not self.status().up_to_date

    def history(self) -> list[RevisionInfo]:
        """Every script, oldest first, marked applied up to the database's revision."""
        current = self.get_current_revision()
        applied = set(self.chain.applied(current)) if current in self.chain else set()
        head = self.get_head_revision()
        return [
            RevisionInfo(
                revision=rev.revision,
                down_revision=rev.down_revision if isinstance(rev.down_revision, str) else None,
                message=(rev.doc or "").strip(),
                path=rev.path,
                applied=rev.revision in applied,
                is_head=rev.revision == head,
            )
            for rev in (self._script_for(r) for r in self.chain)
        ]

    def resolve(self, target: str) -> str | None:
        """The revision id `target` names (None for base): an id, a unique prefix, head, base,
        or +N/-N counted from the database's revision."""
        current = self.get_current_revision() if is_relative(target) else None
        return self.chain.resolve(target, current)

    def plan_upgrade(self, target: str = "head") -> list[str]:
        """The revisions `upgrade(target)` would apply, in order."""
        status = self.require_known_database()
        resolved = self.chain.resolve(target, status.current)
        if self.chain.goes_down(status.current, resolved):
            raise PastTargetError(
                f"cannot upgrade to {target}: it is older than the database's revision "
                f"{status.current}; use `orchestrator db downgrade {target}`"
            )
        return list(self.chain.upgrade_steps(status.current, resolved))

    def plan_downgrade(self, target: str) -> list[str]:
        """The revisions `downgrade(target)` would undo, newest first."""
        status = self.require_known_database()
        resolved = self.chain.resolve(target, status.current)
        if self.chain.goes_down(resolved, status.current):
            raise PastTargetError(
                f"cannot downgrade to {target}: it is newer than the database's revision "
                f"{status.current or 'base'}; use `orchestrator db upgrade {target}`"
            )
        plan = list(self.chain.downgrade_steps(status.current, resolved))
        for revision in plan:
            if getattr(self._script_for(revision).module, "irreversible", False) is True:
                raise IrreversibleMigrationError(
                    f"cannot downgrade past {revision}: the migration declares itself "
                    "irreversible (`irreversible = True`), its data cannot be brought back; "
                    f"downgrade no further than {revision}, or restore a backup taken before it "
                    "(`orchestrator db backups`, then `orchestrator db restore FILE`)"
                )
        return plan

    def preview_downgrade(self, plan: list[str]) -> DowngradePreview:
        """What undoing `plan` (from `plan_downgrade`) destroys: the tables it drops with their
        rows, the columns with their non-null values (`DowngradePreview`)."""
        with self._reading() as connection:
            try:
                return preview(connection, self.script, plan, self._table_names(connection))
            finally:
                if connection is not self._lock_connection:
                    connection.rollback()

    # -- changing ------------------------------------------------------------------------

    def upgrade(
        self, target: str = "head", *, revision: str | None = None, allow_changed: bool = False
    ) -> list[str]:
        """Apply pending revisions up to `target`; returns what was applied, in order."""
        target = revision or target
        # The lock first, the plan under it. A process that finds the lock taken plans at once
        # (a bad target fails early, and with nothing to do it leaves without waiting), then
        # again each time the lock is let go.
        planned = _Planner(self.plan_upgrade, target)
        with self._migration_lock(still_needed=lambda: bool(planned())) as held:
            plan = planned() if held else []
            if not plan:
                return []
            if self.environment.refuses_edited_scripts and not allow_changed:
                self._refuse_changed_scripts()
            return self._run(command.upgrade, plan[-1], plan,
                             replan=lambda: self.plan_upgrade(plan[-1]))

    def downgrade(self, target: str, *, revision: str | None = None) -> list[str]:
        """Undo revisions down to `target` (an id, `-N` or `base`); returns what was undone.

        What it destroys is read first (`last_preview`); when that is any data, a backup is
        taken first whatever BACKUP_BEFORE_MIGRATE says (`last_backup`)."""
        target = revision or target
        self.last_preview = None
        planned = _Planner(self.plan_downgrade, target)
        with self._migration_lock(still_needed=lambda: bool(planned())) as held:
            plan = planned() if held else []
            if not plan:
                return []
            self.last_preview = self.preview_downgrade(plan)
            destination = self._script_for(plan[-1]).down_revision or "base"
            return self._run(command.downgrade, destination, plan,
                             replan=lambda: self.plan_downgrade(destination),
                             backup_first=self.last_preview.loses_data)

    def _refuse_changed_scripts(self) -> None:
        """Refuse to upgrade over applied scripts edited after they ran (`ScriptsChangedError`)."""
        changed = self.changed_scripts()
        if changed:
            listing = ", ".join(f"{c.revision} ({c.path})" for c in changed)
            raise ScriptsChangedError(
                f"applied migration scripts were edited after they ran: {listing}; they no "
                "longer describe this database. Revert the edits (e.g. `git checkout` the "
                "files), or if the change cannot alter the schema (a comment, a docstring) "
                "run again with --allow-changed; `orchestrator db validate` shows details"
            )

    # -- history (migrations/history.py) -------------------------------------------------

    def applied_history(self) -> list[HistoryEntry]:
        """Every revision step the database recorded (`HistoryEntry`), oldest first."""
        if not self.status().database_exists:
            return []
        with self._connect() as connection:
            return history.read(connection)

    def changed_scripts(self) -> list[ChangedScript]:
        """Applied revisions whose script was edited after it ran (`ChangedScript`)."""
        status = self.status()
        if status.ahead or not status.database_exists:
            return []
        applied = self.chain.applied(status.current)
        paths = {revision: self._script_path(revision) for revision in applied}
        # The status above already says the database exists: read the history directly
        # rather than through applied_history(), which would read the status again.
        with self._connect() as connection:
            entries = history.read(connection)
        return history.changed_scripts(entries, applied, paths)
