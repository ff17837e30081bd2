"""Rehearsal: run the pending migrations on a throwaway copy of the database and measure them.

`rehearse()` makes the copy (`copies`), migrates it with the same `MigrationManager.upgrade` as
`db upgrade` while `observe` watches every statement, and returns a `Rehearsal` (`report`): each
statement's duration, locks and how long they were held, rewrites and rows, the linter's
prediction for the same statement, and a verdict. The real database is only read: by the dump
(or not at all, with a backup file).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from orchestrator.migrations.errors import (
    DatabaseLockTimeout,
    MigrationFailedError,
    PastTargetError,
    UnknownRevisionError,
)
from orchestrator.migrations.lint import lint
from orchestrator.migrations.manager import MigrationManager
from orchestrator.migrations.rehearse import copies
from orchestrator.migrations.rehearse import observe as watch
from orchestrator.migrations.rehearse.report import CopyInfo, Prediction, Rehearsal, render_text

__all__ = ["Rehearsal", "rehearse", "render_text"]


def rehearse(
    manager: MigrationManager,
    target: str = "head",
    *,
    from_backup: Path | None = None,
    keep: bool = False,
    max_blocking: float = 1.0,
    allow_changed: bool = False,
    notify: Callable[[str], None] | None = None,
    observe: bool = True,
) -> Rehearsal:
    """Migrate a copy of `manager`'s database to `target` and report what each statement did.

    `observe=False` runs the same migration unobserved (the benchmark's reference).
    """
    say = notify or (lambda _message: None)
    rehearsal = Rehearsal(manager.masked_url, manager.dialect, None, None, max_blocking)
    if from_backup is None:
        status = manager.require_known_database()
        plan = _plan(manager, target, "the database", "", (
            "`db rehearse` rehearses upgrades (to see what a downgrade would undo: "
            f"`orchestrator db downgrade {target} --dry-run`)"))
        rehearsal.from_revision = status.current
        if not plan:
            rehearsal.to_revision = status.current
            copies.remove_stale(manager.database_url)
            return rehearsal
    say(f"Copying {manager.masked_url} to rehearse on it…" if from_backup is None
        else f"Restoring {from_backup} to rehearse on it…")
    with copies.scratch_copy(manager.database_url, from_backup=from_backup, keep=keep) as copy:
        rehearsal.copy = CopyInfo(copy.name, copy.source, copy.seconds, keep)
        _migrate_copy(manager, copy.url, target, rehearsal, allow_changed, say, observe,
                      from_backup)
    return rehearsal


def _migrate_copy(manager: MigrationManager, url: str, target: str, rehearsal: Rehearsal,
                  allow_changed: bool, say: Callable[[str], None], observe: bool,
                  from_backup: Path | None = None) -> None:
    with MigrationManager(url, lock_timeout=manager.lock_timeout,
                          db_lock_timeout=manager.db_lock_timeout,
                          script_location=manager.script_location,
                          environment=manager.environment) as copy:
        status = copy.require_known_database()
        # A backup can be past a target (the database was checked against it already).
        plan = (_plan(copy, target, "the backup", f" on {from_backup}",
                      "pick an older backup (`orchestrator db backups`) or a later revision")
                if from_backup is not None else copy.plan_upgrade(target))
        rehearsal.from_revision = status.current
        rehearsal.to_revision = plan[-1] if plan else status.current
        if not plan:
            return
        say(f"Rehearsing {', '.join(plan)} on the copy…")
        scripts = _script_files(copy, plan)
        with copy.engine.connect() as connection:
            with_rows = watch.tables_with_rows(connection, copy.dialect)
        sampler = watch.sampler(copy.engine) if observe and copy.dialect == "postgresql" else None
        observer = watch.Observer(copy.engine, copy.dialect, scripts, plan, with_rows, sampler)
        copy.progress = observer.step_done
        if observe:
            observer.attach()
        try:
            copy.upgrade(plan[-1], allow_changed=allow_changed)
        except (MigrationFailedError, DatabaseLockTimeout) as exc:
            observer.failed(str(exc))
        finally:
            if observe:
                observer.detach()
            if sampler is not None:
                sampler.close()
        rehearsal.steps = observer.steps
        done = {step.revision for step in observer.steps}
        rehearsal.not_run = [revision for revision in plan if revision not in done]
        if copy.dialect == "postgresql" and observe:
            _add_predictions(copy, plan, rehearsal)


def _plan(manager: MigrationManager, target: str, what: str, where: str,
          advice: str) -> list[str]:
    """`plan_upgrade`, refusing a target already passed in rehearsal's words, not upgrade's
    (whose advice, to downgrade, is not what someone rehearsing an upgrade wants)."""
    try:
        return manager.plan_upgrade(target)
    except PastTargetError:
        raise UnknownRevisionError(
            f"cannot rehearse up to {target}{where}: {what} is already at "
            f"{manager.get_current_revision()}, past it; {advice}") from None


def _script_files(manager: MigrationManager, plan: list[str]) -> dict[str, str]:
    """Each planned revision's script file, as Python names it in its frames."""
    files = {}
    for revision in plan:
        path = manager.script.get_revision(revision).path
        files[path] = revision
        files[os.path.realpath(path)] = revision
    return files


def _add_predictions(manager: MigrationManager, plan: list[str], rehearsal: Rehearsal) -> None:
    """The linter's findings beside the statements they are about (same revision, same line)."""
    try:
        findings = lint(manager.script, manager.chain.applied(plan[-1]))
    except Exception:  # pragma: no cover - a linter bug must not hide the measurements
        return
    for step in rehearsal.steps:
        for statement in step.statements:
            statement.predicted = [
                Prediction(f.code, f.name, f.message) for f in findings
                if f.revision == step.revision and f.line in statement.lines]
