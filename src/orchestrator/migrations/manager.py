"""MigrationManager: one object over Alembic's API for status, upgrade, downgrade and the rest.

Nothing here prints: results are typed values and failures are `MigrationError`s carrying the
command that fixes them. The CLI, the API's start-up and the tests all go through this class.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import db
from orchestrator.db import backend_name, create_engine, mask_url, normalize_url, sqlite_path
from orchestrator.migrations import lock, version
from orchestrator.migrations.chain import Chain, end_or_base, is_relative
from orchestrator.migrations.environment import (
    FILE_TEMPLATE,
    RUN_OPTIONS,
    SCRIPT_DIRECTORY,
    RunOptions,
    next_revision_id,
    running_with,
)
from orchestrator.migrations.errors import (
    BackupError,
    BrokenScriptError,
    ConnectionLostError,
    DatabaseAheadError,
    DatabaseLockTimeout,
    DatabaseUnreachableError,
    EmptyMigrationError,
    Fault,
    ForkedChainError,
    IrreversibleMigrationError,
    MigrationError,
    MigrationFailedError,
    MigrationLockLost,
    MultipleHeadsError,
    NotAtHeadError,
    PastTargetError,
    ScriptsChangedError,
    TransientDatabaseError,
    UnknownRevisionError,
    UnversionedDatabaseError,
    classify,
    first_line,
    one_line,
)
from orchestrator.migrations.version import BOOKKEEPING_TABLES, SELECT_VERSION_SQL, VERSION_TABLE
from orchestrator.settings import Environment

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory
    from sqlalchemy.engine import Connection, Engine

    from orchestrator.migrations.backup import BackupInfo, Progress, RestoreReport
    from orchestrator.migrations.history import ChangedScript, HistoryEntry
    from orchestrator.migrations.preview import DowngradePreview

logger = logging.getLogger(__name__)



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


@dataclass
class _Run:
    """What one Alembic command did, collected from `on_version_apply`."""

    progress: Callable[[str, float], None] | None = None
    steps: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    # Writes each step to `migration_history`, inside the step's transaction.
    history: Any = field(kw_only=True)
    # Called with (connection, revision) as each step starts, between two transactions.
    on_start: Callable[[Any, str], None] | None = field(default=None, kw_only=True)
    # The running step ran a statement outside a transaction (an `autocommit_block()`): what
    # it did before a failure stays.
    autocommitted: bool = False

    def start(self, step, connection) -> None:
        self.autocommitted = False
        if self.on_start is not None:
            self.on_start(connection, step.up_revision_id)

    def record(self, *, step, ctx, **_: Any) -> None:
        # For both directions this is the revision whose script ran.
        self.steps.append(step.up_revision_id)
        self.history.step_done(ctx.connection, step.up_revision_id)
        now = time.perf_counter()
        if self.progress is not None:
            self.progress(step.up_revision_id, now - self.started)
        self.started = now


class MigrationManager:
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

    @cached_property
    def script(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config)

    def _reload_scripts(self) -> None:
        self.__dict__.pop("script", None)
        self.__dict__.pop("chain", None)
        self.__dict__.pop("_heads", None)

    @cached_property
    def _heads(self) -> tuple[str, ...]:
        """The scripts' heads, once every script is loaded and the chain is known to be one
        numbered line (migrations/forks.py): a script that cannot be loaded, or a fork left
        by two branches, is reported here as one line."""
        from orchestrator.migrations import forks

        versions = Path(self.script.versions)
        if (versions / forks.JOURNAL).exists():
            raise ForkedChainError(forks.INTERRUPTED.format(folder=versions))
        # Alembic warns when two scripts claim one revision and keeps either; the fork is
        # reported instead, naming both files. Any other warning goes on as it came.
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=forks.DUPLICATE_WARNING, category=UserWarning)
            try:
                heads = tuple(self.script.get_heads())
            except Exception as exc:
                raise _broken_script(exc, Path(self.script.dir)) from exc
        duplicated = False
        for warning in caught:
            if re.match(forks.DUPLICATE_WARNING, str(warning.message)):
                duplicated = True
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno, source=warning.source)
        if (duplicated or len(heads) > 1 or not forks.in_number_order(
                [rev.revision for rev in reversed(list(self.script.walk_revisions()))])):
            fork = forks.describe(forks.read_refs(Path(self.script.versions)))
            if fork is not None:
                raise ForkedChainError(str(fork))
            raise MultipleHeadsError(  # pragma: no cover - forks.describe names every fork
                f"the migration scripts have {len(heads)} heads ({', '.join(sorted(heads))}); "
                f"{forks.FIX}")
        return heads

    @cached_property
    def chain(self) -> Chain:
        """The scripts' revisions, oldest first (migrations/chain.py), once they are known
        to form one line (one head is enforced)."""
        self.get_head_revision()
        return Chain.from_scripts(self.script)

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

    def get_head_revision(self) -> str | None:
        """The newest revision in the scripts (None when there are none).

        Every command asks this first, and it loads every script: one that cannot be loaded
        is reported here, naming its file and line.
        """
        heads = self._heads
        return heads[0] if heads else None

    def get_current_revision(self) -> str | None:
        """The database's revision (None for a fresh or missing database)."""
        return self._read_database()[0]

    def recorded_revision(self) -> tuple[str | None, dict[str, str]]:
        """The database's revision, and the checksum of the script its history says was last
        applied (or stamped) as each revision: read without loading the scripts, which may
        not load (two branches' migrations with one id, before `db rebase`)."""
        from orchestrator.migrations import history

        current = self._read_database()[0]
        if current is None:
            return None, {}
        with self._connect() as connection:
            entries = history.read(connection)
        checksums = {entry.revision: entry.checksum for entry in entries
                     if entry.success and entry.direction in (history.UPGRADE, history.STAMP)
                     and entry.checksum is not None}
        return current, checksums

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

    def status(self) -> MigrationStatus:
        """Current, head and pending revisions, without changing anything."""
        head = self.get_head_revision()
        current, exists, unversioned, interrupted, read_only = self._read_database(
            with_history=True)
        if current is not None and current not in self.chain:
            return MigrationStatus(current, head, (), exists, ahead=True, interrupted=interrupted,
                                   read_only=read_only)
        return MigrationStatus(current, head, self.chain.upgrade_steps(current, head), exists, unversioned,
                               interrupted=interrupted, read_only=read_only)

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
        from orchestrator.migrations.preview import preview

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
        from alembic import command

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
        from alembic import command

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

    def stamp(self, revision: str) -> None:
        """Record `revision` as the database's revision without running any migration."""
        from alembic import command

        from orchestrator.migrations import history

        with self._migration_lock():
            # A relative revision (+1, -1) counts from the database's revision, as upgrade does.
            current = self.get_current_revision() if is_relative(revision) else None
            resolved = self.chain.resolve(revision, current)
            with self._connect(create=True) as connection:
                started = time.perf_counter()
                with running_with(self.config, connection=connection):
                    command.stamp(self.config, resolved or "base", purge=True)
                history.ensure_table(connection)
                history.record(
                    connection,
                    revision=resolved or "base",
                    direction=history.STAMP,
                    duration=time.perf_counter() - started,
                    # Stamping vouches that the database matches this script as it is now.
                    script_checksum=history.checksum(self._script_path(resolved)),
                )
                connection.commit()

    def create(self, message: str, autogenerate: bool = True) -> Path:
        """Write a new revision script; autogenerate compares the models with the database."""
        from alembic import command

        if not message.strip():
            raise MigrationError("a migration needs a message; pass -m 'what it changes'")
        # A database ahead of these scripts needs newer code (or a stamp), not an upgrade.
        status = self.require_known_database()
        if not status.up_to_date and status.head is not None:
            raise NotAtHeadError(
                f"the database is at {status.current or 'base'}, not at head {status.head}; "
                "run `orchestrator db upgrade` first so the new migration starts from head"
            )

        def refuse_empty(_context, _revision, directives) -> None:
            if autogenerate and directives[0].upgrade_ops.is_empty():
                directives[:] = []

        rev_id = next_revision_id(self.script)
        with self._connect(create=True) as connection:
            with running_with(self.config, connection=connection):
                script = command.revision(
                    self.config,
                    message=message,
                    autogenerate=autogenerate,
                    rev_id=rev_id,
                    process_revision_directives=refuse_empty,
                )
        self._reload_scripts()
        if isinstance(script, list):  # Alembic returns a list when directives were filtered
            script = script[0] if script else None
        if script is None:
            raise EmptyMigrationError(
                "no differences between the models and the database; change a model first, "
                "or pass --empty to write the migration by hand"
            )
        return Path(script.path)

    def create_migration(self, message: str, auto: bool = True) -> str:
        """The seed's name for `create`; returns the new script's path."""
        return str(self.create(message, autogenerate=auto))

    def sql(
        self, target: str = "head", start: str | None = None, direction: str | None = None
    ) -> str:
        """The SQL that migrating from `start` (default: base) to `target` runs, without a database.

        A relative `target` (+1, -2) counts from `start`. `direction` ("upgrade" or "downgrade")
        refuses a range that goes the other way.
        """
        from alembic import command

        output = io.StringIO()
        # The same lock_timeout as an online run's (applied by hand, it must give up as fast).
        config = alembic_config(self.database_url, output_buffer=output,
                                script_location=self.script_location,
                                db_lock_timeout=self.db_lock_timeout)
        begin, end = self.chain.resolve_range(start, target)
        backwards = self.chain.goes_down(begin, end)
        if direction is not None and begin != end and backwards != (direction == "downgrade"):
            span = f"{end_or_base(begin)}:{end_or_base(end)}"
            actual = "downgrade" if backwards else "upgrade"
            article = ("a", "an") if backwards else ("an", "a")
            raise UnknownRevisionError(
                f"{span} is {article[0]} {actual}, not {article[1]} {direction}; "
                f"use `orchestrator db {actual} {span} --sql`"
            )
        if backwards:
            command.downgrade(config, f"{end_or_base(begin)}:{end_or_base(end)}", sql=True)
        else:
            command.upgrade(config, f"{begin}:{end}" if begin else end, sql=True)
        return output.getvalue()

    # -- history, backups and restores (migrations/history.py, migrations/backup.py) -----

    def applied_history(self) -> list[HistoryEntry]:
        """Every revision step the database recorded (`HistoryEntry`), oldest first."""
        from orchestrator.migrations import history

        if not self.status().database_exists:
            return []
        with self._connect() as connection:
            return history.read(connection)

    def changed_scripts(self) -> list[ChangedScript]:
        """Applied revisions whose script was edited after it ran (`ChangedScript`)."""
        from orchestrator.migrations import history

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

    def backup(
        self, output: str | Path | None = None, *, progress: Progress | None = None
    ) -> BackupInfo:
        """Back up the database (to `output`, or into the backup folder); returns `BackupInfo`."""
        return self._backup("manual", Path(output) if output else None, progress)

    def backups(self) -> list[BackupInfo]:
        """This database's backups in the backup folder (`BackupInfo`), newest first."""
        from orchestrator.migrations import backup

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
        from orchestrator.migrations import backup

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

    # -- internals -----------------------------------------------------------------------

    def _own_sessions(self) -> list[int]:
        """PostgreSQL sessions of ours that a restore must not end: the migration lock's."""
        if self._lock_connection is None:
            return []
        return [self._lock_connection.connection.driver_connection.info.backend_pid]

    def _restore_over_damage(self, checked: BackupInfo) -> RestoreReport:
        """A SQLite file too damaged to read: keep its bytes, then put the backup in its place."""
        from orchestrator.migrations import backup

        self.close()
        safety = backup.create(
            self.database_url, backup_dir=self.backup_dir, reason="damaged", damaged=True
        )
        logger.warning("the database file was damaged; its bytes were kept in %s", safety.path)
        restored = backup.replace_damaged_sqlite(self.database_url, checked)
        backup.prune(self.database_url, self.backup_dir, self.backup_keep, exclude=[checked.path])
        current, _, unversioned, _, _ = self._read_database()
        return backup.RestoreReport(restored, safety, current, unversioned)

    def _script_for(self, revision: str) -> Script:
        return self.script.get_revision(revision)

    def _script_path(self, revision: str | None) -> str | None:
        return self._script_for(revision).path if revision is not None else None

    def _backup(
        self, reason: str, output: Path | None, progress: Progress | None, prune: bool = True
    ) -> BackupInfo:
        from orchestrator.migrations import backup

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

    def _refuse_changed_scripts(self) -> None:

        changed = self.changed_scripts()
        if changed:
            listing = ", ".join(f"{c.revision} ({c.path})" for c in changed)
            raise ScriptsChangedError(
                f"applied migration scripts were edited after they ran: {listing}; they no "
                "longer describe this database. Revert the edits (e.g. `git checkout` the "
                "files), or if the change cannot alter the schema (a comment, a docstring) "
                "run again with --allow-changed; `orchestrator db validate` shows details"
            )

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
        from sqlalchemy.exc import DBAPIError

        from orchestrator.migrations import history

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
        from orchestrator.migrations import backup

        return backup.read_only_by_default(backup.read_only_setting(connection))

    def make_writable_statement(self) -> str:
        """PostgreSQL: what the database's owner runs to make its new sessions writable."""
        from sqlalchemy.engine import make_url

        from orchestrator.migrations import backup

        name = make_url(self.database_url).database
        return backup.make_writable(self.engine.dialect.identifier_preparer.quote(name))

    def _lock_taken(self, connection: Connection) -> bool:
        """Whether another process holds the migration lock (we do not, when asking)."""
        if self._lock_held:
            return False
        path = sqlite_path(self.database_url)
        if path is not None:
            return lock.file_lock_taken(lock.lock_file_for(path))
        from sqlalchemy import text

        return bool(connection.execute(text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND pid <> pg_backend_pid()"), {"key": lock.ADVISORY_LOCK_KEY}).first())

    def _version_rows(self, connection: Connection) -> list | None:
        """The version table's rows, or None when the table does not exist."""
        from sqlalchemy import text

        try:
            return list(connection.execute(text(SELECT_VERSION_SQL)).all())
        except Exception as exc:
            if not _is_missing_table(exc):
                raise self._unreachable(exc) from exc
            connection.rollback()
            return None

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
                from sqlalchemy import event

                event.listen(self._engine, "connect", lock.protect_new_session)
        return self._engine

    @contextlib.contextmanager
    def _connect(self, create: bool = False) -> Iterator[Connection]:
        """A connection; for SQLite, `create` allows making a missing file."""
        from sqlalchemy.exc import DBAPIError

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

    def _await_sqlite_writer(self, connection: Connection, action: str) -> None:
        """Let a step in flight end before we plan again: its migrator may have lost the lock
        file after its last check and still commit (see lock.py). A step holds the database's
        write lock from its first statement to its commit, so taking that lock once waits for
        it (with a backup first, the command's own transaction takes it instead)."""
        self._begin_writing(connection, action)
        connection.rollback()

    @staticmethod
    def _begin_writing(connection: Connection, action: str) -> None:
        """SQLite: begin a transaction holding the database's write lock, waiting for it up to
        the busy timeout."""
        from sqlalchemy.exc import OperationalError

        try:
            connection.execution_options(sqlite_begin="BEGIN IMMEDIATE").begin()
        except OperationalError as exc:
            connection.rollback()
            raise DatabaseLockTimeout(
                f"the {action} gave up waiting for the database's write lock ({exc.orig}): "
                f"another connection kept a transaction open on it for more than "
                f"{db.SQLITE_BUSY_TIMEOUT:g}s; retry later, stop what holds it, or pass "
                "--retries"
            ) from None

    @contextlib.contextmanager
    def _migrating(self, connection: Connection, run: _Run) -> Iterator[bool]:
        """Migrate on `connection` for the block, only while the migration lock is held; yields
        whether a migrator that lost the lock had to be waited for (PostgreSQL).

        Every commit on the connection first asks whether the lock is still held; once it is
        found lost (by that, or by the watch's helper thread, which then stops the running
        statement), no statement runs any more."""
        from sqlalchemy import event

        watch = self._watch
        waited = False
        with contextlib.ExitStack() as stack:
            if self.dialect == "postgresql":
                waited = stack.enter_context(lock.migrating(connection, self.lock_timeout))
                driver = connection.connection.driver_connection
                stop_statement, autocommit = driver.cancel, lambda: driver.autocommit
            else:
                driver = connection.connection.driver_connection
                stop_statement, autocommit = driver.interrupt, lambda: False

            def before_statement(*_: Any) -> None:
                watch.refuse_if_lost()
                if autocommit():
                    # The statement commits as it ends: ask first, as before a commit.
                    run.autocommitted = True
                    watch.verify()

            def before_commit(conn: Connection) -> None:
                try:
                    watch.verify()
                except MigrationLockLost:
                    # Nothing after this may commit the step's work: end its transaction here.
                    conn.connection.dbapi_connection.rollback()
                    raise

            event.listen(connection, "before_cursor_execute", before_statement)
            event.listen(connection, "commit", before_commit)
            stack.callback(event.remove, connection, "before_cursor_execute", before_statement)
            stack.callback(event.remove, connection, "commit", before_commit)
            stack.enter_context(watch.watching(stop_statement))
            yield waited

    def _run(
        self,
        command_fn: Callable[..., Any],
        destination: str,
        plan: list[str],
        replan: Callable[[], list[str]],
        backup_first: bool = False,
    ) -> list[str]:
        """Run an Alembic command on our own connection and report what it did; `backup_first`:
        take a backup first even when BACKUP_BEFORE_MIGRATE is off (data would be lost).

        With a backup first (BACKUP_BEFORE_MIGRATE), on PostgreSQL the backup is a snapshot
        taken before, and each revision commits on its own. On SQLite the backup and every
        revision run inside one transaction that holds the database's write lock from before
        the backup to the end: a failure rolls the whole command back, and no other
        connection can commit anything that the backup lacks and a rollback would lose.
        `replan` plans again after waiting for a migrator that lost the lock to stop.
        """
        from sqlalchemy.exc import DBAPIError

        from orchestrator.migrations import history

        action = command_fn.__name__
        self.last_backup = None
        backup = None
        recorder = history.Recorder(action, self._script_path)
        run = _Run(self.progress, history=recorder)
        failure: BaseException | None = None
        with self._connect(create=True) as connection, self._migrating(connection, run) as waited:
            whole = self._wants_backup()
            # Taken because data would be lost, not because the setting asks for it.
            for_loss = backup_first and not whole
            whole = whole or backup_first
            if whole and self.dialect != "sqlite":
                backup = self._backup_before(
                    action, for_loss, lambda: self._backup(f"before-{action}", None, None))
                whole = False
            history.ensure_table(connection)
            connection.commit()
            with contextlib.ExitStack() as held:
                if whole:
                    backup = self._begin_with_backup(connection, held, action, for_loss)
                else:
                    run.on_start = recorder.step_started
                    if self.dialect == "sqlite":
                        self._await_sqlite_writer(connection, action)
                if waited or self.dialect == "sqlite":
                    try:
                        plan = replan()
                    except PastTargetError:  # it went past our target before it stopped
                        plan = []
                    if not plan:
                        connection.rollback()
                        return []
                try:
                    with running_with(self.config, connection=connection,
                                      on_version_apply=run.record, on_step_start=run.start):
                        command_fn(self.config, destination)
                except BaseException as exc:
                    failure = exc
                    if whole:
                        connection.rollback()
                else:
                    if whole:
                        connection.commit()
        if failure is not None:
            failed = plan[min(len(run.steps), len(plan) - 1)]
            upgrading = action == "upgrade"
            fault = _fault(failure)
            ended = fault is not None and fault[0] == "ended"
            if self._watch.lost is not None and not ended:
                # Without the lock nothing more is written: the step's row stays "interrupted",
                # which is what happened to it.
                raise self._lock_lost(failed, upgrading) from failure
            try:
                # What the database said, rather than the failed cleanup after it.
                self._record_failure(fault[1] if ended else failure, plan, run, recorder,
                                     rolled_back=whole)
            except (MigrationError, DBAPIError) as exc:
                if not ended:
                    raise
                # The server is not back yet: the step's row says "interrupted" until it is.
                logger.warning("could not record the failed step: %s", exc)
            if _interrupted(failure):
                # A failure caused by Ctrl-C is reported as what it is.
                raise KeyboardInterrupt from failure
            if ended:
                raise self._connection_lost(fault[1], failed, upgrading, run) from failure
            raise self._failure(
                failure, failed, upgrading, backup, rolled_back=whole
            ) from failure
        return list(plan[: len(run.steps)])

    def _revision_now(self) -> str | None:
        """The database's revision read afresh, or None when it cannot be read."""
        try:
            with self._connect() as connection:
                rows = self._version_rows(connection)
        except MigrationError:
            return None
        return rows[0][0] if rows else "base"

    def _lock_lost(self, failed: str, upgrading: bool) -> MigrationLockLost:
        current = self._revision_now()
        where = (f"the database is at {current}" if current is not None
                 else "the database could not be read to tell its revision")
        command = ("`orchestrator db upgrade`" if upgrading
                   else "the same `orchestrator db downgrade`")
        return MigrationLockLost(
            f"lost the migration lock ({self._watch.lost}) during {failed}, and stopped "
            f"without committing it; {where}; run {command} again (another migrator may "
            "already be completing it)"
        )

    def _connection_lost(
        self, exc: BaseException, failed: str, upgrading: bool, run: _Run
    ) -> ConnectionLostError:
        current = self._revision_now()
        if current is None:
            current = end_or_base(self.chain.before(failed)) if upgrading else failed
            where = f"the database should be at {current} (it cannot be read now)"
        else:
            where = f"the database is at {current}"
        if run.autocommitted:
            left = (f"{failed} runs statements outside a transaction: what they did before the "
                    "cut stays (an index built CONCURRENTLY, or an INVALID one), and running it "
                    "again completes it")
        else:
            left = f"nothing of {failed} was committed"
        command = ("`orchestrator db upgrade`" if upgrading
                   else "the same `orchestrator db downgrade`")
        return ConnectionLostError(
            f"migration {failed} was cut off: the database ended its connection "
            f"({_reason(exc)}); {left}; {where}; once the server is back, run {command} "
            "again (`--retries N` reconnects and goes on by itself)",
            revision=failed,
        )

    def _begin_with_backup(
        self, connection: Connection, held: contextlib.ExitStack, action: str, for_loss: bool
    ) -> BackupInfo:
        """SQLite: begin the transaction the whole command runs in, with the write lock taken
        first, and back the database up under it."""
        from orchestrator.migrations import backup

        path = sqlite_path(self.database_url)
        # Opened before the lock is taken, closed after it is let go (see backup._backup_sqlite).
        data = held.enter_context(open(path, "rb"))
        self._begin_writing(connection, action)
        wal = connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        info = self._backup_before(action, for_loss, lambda: backup.create_held(
            self.database_url, data, wal, backup_dir=self.backup_dir,
            reason=f"before-{action}", progress=self.backup_progress))
        backup.prune(self.database_url, self.backup_dir, self.backup_keep)
        return info

    def _record_failure(
        self, failure: BaseException, plan: list[str], run: _Run, recorder, rolled_back: bool
    ) -> None:
        """Write the failed (or interrupted) step to the history, on a fresh transaction."""
        from orchestrator.migrations import history

        failed = plan[min(len(run.steps), len(plan) - 1)]
        error = (history.INTERRUPTED if _interrupted(failure)
                 else f"{type(failure).__name__}: {failure}")
        with self._connect() as connection:
            if rolled_back:
                # The steps that succeeded were rolled back with the failed one.
                recorder.rewrite(connection)
            recorder.step_failed(connection, failed, error)
            connection.commit()

    def step_failure(self, exc: BaseException, revision: str, upgrading: bool) -> MigrationError:
        """The error `upgrade` (or `downgrade`) raises when `revision`'s step fails with `exc`."""
        return self._failure(exc, revision, upgrading)

    def _failure(
        self,
        exc: BaseException,
        failed: str,
        upgrading: bool,
        backup: BackupInfo | None = None,
        rolled_back: bool = False,
    ) -> MigrationError:
        reason = first_line(exc)
        if classify(exc) is Fault.LOCK_TIMEOUT:
            return DatabaseLockTimeout(
                f"migration {failed} gave up waiting for a table lock ({reason}); a long "
                "transaction holds it: retry later, or raise DB_LOCK_TIMEOUT or --retries"
            )
        fault = _fault(exc)
        if fault is not None and fault[0] == "transient":
            undone = "was not applied" if upgrading else "was not undone"
            return TransientDatabaseError(
                f"migration {failed} met a conflict with another transaction "
                f"({_reason(fault[1])}) "
                f"and {undone}: transient: run it again or use `--retries N`"
            )
        # Upgrading, the failed revision was not applied; downgrading, it was not undone.
        last_good = self.chain.before(failed) if upgrading else failed
        where = f"the database is at {last_good or 'base'}"
        if rolled_back:
            where = (
                f"the whole command ran in one transaction and was rolled back: the database "
                f"is back at {backup.revision or 'base'}, as before the command (its backup: "
                f"{backup.path})"
            )
        elif backup is not None:
            where += f"; the backup taken before the command is {backup.path}"
        return MigrationFailedError(
            f"migration {failed} failed: {type(exc).__name__}: {reason}; {where}; "
            "fix the script and run the command again",
            revision=failed,
        )


def alembic_config(
    database_url: str, output_buffer: Any = None, script_location: str = SCRIPT_DIRECTORY,
    *, db_lock_timeout: str | float | None = None,
) -> Config:
    """The Alembic `Config` used for every programmatic run; mirrors `alembic.ini`. Its run
    options (environment.RunOptions) name the database and the table-lock timeout (None:
    DB_LOCK_TIMEOUT's)."""
    from alembic.config import Config

    # quiet: nothing below the CLI prints; results are returned instead.
    config = Config(output_buffer=output_buffer, cmd_opts=argparse.Namespace(quiet=True))
    config.set_main_option("script_location", script_location)
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.attributes[RUN_OPTIONS] = RunOptions(database_url=database_url,
                                                db_lock_timeout=db_lock_timeout)
    # The manager takes the lock and records the history itself. Code that calls Alembic with
    # this configuration but without the manager drops the flag (tests/migrations/test_lock.py).
    config.attributes["managed"] = True
    return config


def _is_missing_table(exc: Exception) -> bool:
    return classify(exc) is Fault.MISSING_SCHEMA


def _broken_script(exc: Exception, folder: Path) -> BrokenScriptError:
    """What went wrong loading the scripts of `folder`, as one line naming the file and line
    when a script raised (or does not parse), or what Alembic found wrong with the chain."""
    import traceback

    folder = folder.resolve()

    def in_folder(filename: str | None) -> bool:
        return filename is not None and Path(filename).resolve().is_relative_to(folder)

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if in_folder(f.filename)]
    if isinstance(exc, SyntaxError) and in_folder(exc.filename):
        where, line, reason = exc.filename, exc.lineno, exc.msg
    elif frames:
        where, line, reason = frames[-1].filename, frames[-1].lineno, str(exc).strip()
    else:
        # Alembic's own complaint: a parent no script has (a KeyError naming it), a cycle.
        return BrokenScriptError(
            f"the migration scripts in {folder} do not form a chain ({type(exc).__name__}: "
            f"{exc}); `orchestrator db validate` names the script at fault"
        )
    reason = reason.splitlines()[0] if reason else ""
    return BrokenScriptError(
        f"the migration script {where}, line {line}, cannot be loaded: {type(exc).__name__}: "
        f"{reason}; fix the script (every command loads all of them; --verbose shows the "
        "traceback)"
    )


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C, or an error raised while Ctrl-C was being handled (SQLAlchemy
    and Alembic clean up after an interrupted statement and may fail doing so)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fault(exc: BaseException | None) -> tuple[str, BaseException] | None:
    """("ended", the error) when the database ended the connection (or the server went away),
    ("transient", the error) for a conflict that running again resolves, else None; by error
    code and type, along the chain of errors (a failed cleanup after the cut, such as
    SQLAlchemy's PendingRollbackError, may be the one raised)."""
    from sqlalchemy.exc import DBAPIError

    while exc is not None:
        if isinstance(exc, DBAPIError):
            fault = classify(exc)
            if fault is Fault.ENDED:
                return "ended", exc
            if fault is Fault.TRANSIENT:
                return "transient", exc
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: BaseException) -> str:
    """The driver's error, as `Type: first line`."""
    return one_line(exc)
