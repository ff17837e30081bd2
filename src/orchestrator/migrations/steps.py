"""Seeing Alembic's steps: the hook that tells who asks as each step starts (`watch_steps`), and
`migration_history` written for Alembic runs the manager did not start (`UnmanagedHistory`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.migrations import history

if TYPE_CHECKING:
    from alembic.runtime.environment import EnvironmentContext

logger = logging.getLogger(__name__)


def watch_steps(migration_context: Any, on_start: Any) -> None:
    """Call `on_start(step)` as Alembic takes each step from its plan, before the step's
    transaction begins.

    The plan is the command's function that `MigrationContext.run_migrations` iterates
    (`_migrations_fn`), wrapped here. It is not public API, and is kept because no public hook
    serves (Alembic 1.x): `on_version_apply` is called after a step, in its transaction;
    `process_revision_directives` only serves `revision`/autogenerate; the `MigrationContext`
    API offers no callback before a step. A step must be known as it starts: the history marks
    it started (so a process killed mid-step leaves an "interrupted" row), and a failure is
    recorded against the step that failed, which `on_version_apply` never sees. `fn` of
    `EnvironmentContext` is public, but the `command.upgrade`/`downgrade`/`stamp` the manager
    and the `alembic` command call build it themselves, from private `ScriptDirectory`
    helpers. Should `_migrations_fn` go, steps are known only once they end (below: no-op).
    """
    plan = getattr(migration_context, "_migrations_fn", None)
    if plan is None:  # pragma: no cover - an Alembic without it
        return

    def steps(heads: Any, context: Any) -> Iterator[Any]:
        for step in plan(heads, context):
            on_start(step.info)
            yield step

    migration_context._migrations_fn = steps


class UnmanagedHistory:
    """`migration_history` for Alembic runs the manager did not start, written as it writes it.

    Each step's row goes into the step's own transaction. A step that fails is recorded after
    its transaction was rolled back: which step it was is seen by watching Alembic's plan as it
    is run, so an error before any step (a bad target) records nothing.
    """

    def __init__(self, context: EnvironmentContext) -> None:
        self._context = context
        self._recorder = history.Recorder(history.UPGRADE, self._script_path)
        # The step being run: from its start until it is recorded.
        self._running = None

    def _script_path(self, revision: str | None) -> str | None:
        script = self._context.script.get_revision(revision) if revision else None
        return script.path if script is not None else None

    def step_started(self, step: Any, _connection: Any) -> None:
        """Note the step Alembic is about to run, to record it if it fails."""
        self._running = step

    @staticmethod
    def _describe(step) -> tuple[str, str]:
        """(direction, revision) of a step, as the manager records them."""
        if step.is_stamp:
            return history.STAMP, next(iter(step.destination_revision_ids), "base")
        # For both directions the revision whose script ran.
        return (history.UPGRADE if step.is_upgrade else history.DOWNGRADE), step.up_revision_id

    def step_done(self, *, step, ctx, **_: Any) -> None:
        self._running = None
        direction, revision = self._describe(step)
        history.ensure_table(ctx.connection)
        self._recorder.step_done(ctx.connection, revision, direction)

    def step_failed(self, connection, exc: Exception) -> None:
        if self._running is None:
            return
        direction, revision = self._describe(self._running)
        try:
            connection.rollback()  # what the failed step left, if anything
            history.ensure_table(connection)
            self._recorder.step_failed(connection, revision, f"{type(exc).__name__}: {exc}",
                                       direction)
            connection.commit()
        except Exception as error:  # the migration's own error is the one to report
            logger.warning("could not record the failed step in %s: %s", history.HISTORY_TABLE,
                           error)
