"""Running one Alembic command (upgrade or downgrade) for the manager: on its own connection,
under the migration lock, with the backup first when one is due, each step recorded in the
history, and a failure recorded and reported as one error (failures.py)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError

from orchestrator import db
from orchestrator.migrations import history, lock
from orchestrator.migrations.environment import running_with
from orchestrator.migrations.errors import (
    DatabaseLockTimeout,
    MigrationError,
    MigrationLockLost,
    PastTargetError,
)
from orchestrator.migrations.manager.failures import (
    connection_lost,
    fault_of,
    is_interrupted,
    lock_lost,
    step_failed,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


logger = logging.getLogger(__name__)


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


class Runner:
    """`MigrationManager`'s `_run`: what `upgrade` and `downgrade` do once they have a plan."""

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
            fault = fault_of(failure)
            ended = fault is not None and fault[0] == "ended"
            if self._watch.lost is not None and not ended:
                # Without the lock nothing more is written: the step's row stays "interrupted",
                # which is what happened to it.
                raise lock_lost(failed, upgrading, current=self._revision_now(),
                                lost=self._watch.lost) from failure
            try:
                # What the database said, rather than the failed cleanup after it.
                self._record_failure(fault[1] if ended else failure, plan, run, recorder,
                                     rolled_back=whole)
            except (MigrationError, DBAPIError) as exc:
                if not ended:
                    raise
                # The server is not back yet: the step's row says "interrupted" until it is.
                logger.warning("could not record the failed step: %s", exc)
            if is_interrupted(failure):
                # A failure caused by Ctrl-C is reported as what it is.
                raise KeyboardInterrupt from failure
            if ended:
                raise connection_lost(
                    fault[1], failed, upgrading, current=self._revision_now(),
                    autocommitted=run.autocommitted, chain=self.chain) from failure
            raise step_failed(
                failure, failed, upgrading, self.chain, backup, rolled_back=whole
            ) from failure
        return list(plan[: len(run.steps)])

    def _record_failure(
        self, failure: BaseException, plan: list[str], run: _Run, recorder, rolled_back: bool
    ) -> None:
        """Write the failed (or interrupted) step to the history, on a fresh transaction."""
        failed = plan[min(len(run.steps), len(plan) - 1)]
        error = (history.INTERRUPTED if is_interrupted(failure)
                 else f"{type(failure).__name__}: {failure}")
        with self._connect() as connection:
            if rolled_back:
                # The steps that succeeded were rolled back with the failed one.
                recorder.rewrite(connection)
            recorder.step_failed(connection, failed, error)
            connection.commit()

    def step_failure(self, exc: BaseException, revision: str, upgrading: bool) -> MigrationError:
        """The error `upgrade` (or `downgrade`) raises when `revision`'s step fails with `exc`."""
        return step_failed(exc, revision, upgrading, self.chain)

    def _await_sqlite_writer(self, connection: Connection, action: str) -> None:
        """Let a step in flight end before we plan again: its migrator may have lost the lock
        file after its last check and still commit (see lock/sqlite.py). A step holds the database's
        write lock from its first statement to its commit, so taking that lock once waits for
        it (with a backup first, the command's own transaction takes it instead)."""
        self._begin_writing(connection, action)
        connection.rollback()

    @staticmethod
    def _begin_writing(connection: Connection, action: str) -> None:
        """SQLite: begin a transaction holding the database's write lock, waiting for it up to
        the busy timeout."""
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
