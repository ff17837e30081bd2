"""The `db` commands that change the schema or its record: upgrade, downgrade, stamp, create,
and the retrying run that upgrade and downgrade share."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.options import (
    LOCK_TIMEOUT,
    MAX_BLOCKING,
    RETRIES,
    REVISION_ARGS,
    common_options,
    complete_revisions,
    confirm,
    manager_for,
    must_ask,
    note,
    refusal,
    revision_argument,
)
from orchestrator.cli.progress import progress
from orchestrator.cli.render import (
    echo_json,
    print_backup_taken,
    print_downgrade_plan,
    title,
)
from orchestrator.errors import BadInputError, ExitCode

if TYPE_CHECKING:
    from orchestrator.migrations import MigrationManager


@click.command(context_settings=REVISION_ARGS)
@common_options
@click.argument("revision", default="head", callback=revision_argument,
                shell_complete=complete_revisions)
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (REV may be START:END).")
@LOCK_TIMEOUT
@RETRIES
@click.option(
    "--allow-changed",
    is_flag=True,
    help="Upgrade even though applied scripts were edited since (staging, production).",
)
@click.option("--rehearse", "rehearse_first", is_flag=True,
              help="Rehearse on a copy first (`db rehearse`); upgrade only if it passes.")
@MAX_BLOCKING
@click.pass_context
def upgrade(
    ctx: click.Context,
    revision: str,
    sql: bool,
    lock_timeout: float | None,
    retries: int,
    allow_changed: bool,
    rehearse_first: bool,
    max_blocking: float,
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    manager = manager_for(ctx, lock_timeout=lock_timeout)
    if sql and rehearse_first:
        raise BadInputError("--rehearse runs the migrations on a copy; it cannot go with --sql")
    if rehearse_first and manager.plan_upgrade(revision):
        # Imported here: the rehearsal costs 0.03 s, paid only with --rehearse.
        from orchestrator.migrations.rehearse import rehearse, render_text

        rehearsal = rehearse(manager, revision, max_blocking=max_blocking,
                             allow_changed=allow_changed, notify=note)
        click.echo(render_text(rehearsal))
        click.echo("")
        if not rehearsal.ok:
            note(f"Not upgrading: the rehearsal failed ({rehearsal.problems()[0]}).")
            ctx.exit(ExitCode.CHECK_FAILED)
    if sql:
        _print_sql(manager, revision, "upgrade")
        return
    plan = manager.plan_upgrade(revision)
    current = manager.get_current_revision()
    if not plan:
        click.echo(f"Already at {current or 'base'}: nothing to apply.")
        return
    click.echo(f"Upgrading {manager.masked_url} from {current or 'base'} to {plan[-1]}:")
    manager.backup_progress = progress(ctx, "Backing up first")
    # To the revision planned, not REVISION again: a relative one (+1) counted afresh after a
    # wait for the lock would go further than said above.
    _migrate(ctx, manager, functools.partial(manager.upgrade, allow_changed=allow_changed),
             plan[-1], retries, "Applied", each_step=True)


@click.command(context_settings=REVISION_ARGS)
@common_options
@click.argument("revision", callback=revision_argument, shell_complete=complete_revisions)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--dry-run", is_flag=True,
              help="List what it would undo and destroy, and change nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the plan, what it destroys and what was done as JSON "
                   "(docs/migrations.md).")
@LOCK_TIMEOUT
@RETRIES
@click.pass_context
def downgrade(
    ctx: click.Context,
    revision: str,
    yes: bool,
    sql: bool,
    dry_run: bool,
    as_json: bool,
    lock_timeout: float | None,
    retries: int,
) -> None:
    """Undo migrations down to REVISION (an id, -1, or base; with --sql also START:END)."""
    if sql and (dry_run or as_json):
        raise click.UsageError("--sql prints the SQL only: it cannot be combined with "
                               "--dry-run or --json", ctx=ctx)
    manager = manager_for(ctx, lock_timeout=lock_timeout)
    if sql:
        _print_sql(manager, revision, "downgrade")
        return
    plan = manager.plan_downgrade(revision)
    current = manager.get_current_revision()
    destination = (manager.script.get_revision(plan[-1]).down_revision or "base") if plan else None
    preview = manager.preview_downgrade(plan) if plan else None
    say = note if as_json else click.echo
    document = _downgrade_document(manager, plan, current, destination, preview, dry_run)
    if not plan:
        say(f"Already at {current or 'base'}: nothing to undo.")
        if as_json:
            echo_json(document)
        return
    print_downgrade_plan(manager, plan, destination, preview, say)
    if dry_run:
        say("Dry run: nothing was changed.")
        if as_json:
            echo_json(document)
        return
    if must_ask(manager, yes):
        confirm("Downgrade the production database?", refusal("downgrade production"))
    manager.backup_progress = progress(ctx, "Backing up first")
    # The plan above listed each revision: the run reports only its outcome. It goes down to
    # the destination listed, not to REVISION again (-1 counted afresh after a wait for the
    # lock would undo a revision nobody was shown, or asked about).
    done = _migrate(ctx, manager, manager.downgrade, destination, retries, "Undid",
                    each_step=False, say=say)
    if as_json:
        if manager.last_preview is not None:  # as read under the lock, just before it ran
            document["destroys"] = manager.last_preview.as_dict()
        backup = manager.last_backup
        document.update(undone=done, backup=backup.as_dict() if backup else None)
        echo_json(document)


def _downgrade_document(manager: MigrationManager, plan: list[str], current: str | None,
                        destination: str | None, preview, dry_run: bool) -> dict[str, Any]:
    """`db downgrade --json` before the run: what it undoes and destroys (the run adds what
    was undone and the backup)."""
    return {
        "database": manager.masked_url,
        "from": current,
        "to": destination if plan else current,
        "undoes": [{"revision": rev, "title": title(manager, rev)} for rev in plan],
        "destroys": preview.as_dict() if preview else None,
        "dry_run": dry_run,
        "undone": [],
        "backup": None,
    }


def _print_sql(manager: MigrationManager, revision: str, direction: str) -> None:
    """`--sql`: the SQL of the run, offline; REVISION may be START:END."""
    # Imported here: the migration package, 1.4 s that `--help` skips (orchestrator.cli).
    from orchestrator.migrations.chain import split_range

    start, end = split_range(revision)
    if direction == "upgrade":
        click.echo(manager.sql(end or "head", start=start, direction="upgrade"), nl=False)
        return
    start = start or manager.get_current_revision() or "head"
    click.echo(manager.sql(end, start=start, direction="downgrade"), nl=False)


@click.command()
@common_options
@click.option("-m", "--message", required=True, help="What the migration changes.")
@click.option("--empty", is_flag=True, help="Write an empty script to fill in by hand.")
@click.pass_context
def create(ctx: click.Context, message: str, empty: bool) -> None:
    """Write a new migration (autogenerated from the models unless --empty)."""
    path = manager_for(ctx).create(message, autogenerate=not empty)
    click.echo(f"Created {path}")
    click.echo("Review it (docs/migrations.md), then run `orchestrator db upgrade`.")


@click.command(context_settings=REVISION_ARGS)
@common_options
@click.argument("revision", callback=revision_argument, shell_complete=complete_revisions)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (production).")
@click.pass_context
def stamp(ctx: click.Context, revision: str, yes: bool) -> None:
    """Record REVISION as the database's revision without running migrations."""
    manager = manager_for(ctx)
    if must_ask(manager, yes):
        target = manager.resolve(revision) or "base"  # a wrong revision fails before the question
        current = manager.get_current_revision() or "none"
        click.echo(f"Stamping {manager.masked_url}: its recorded revision goes from {current} "
                   f"to {target}, and no migration runs.")
        confirm("Change the production database's recorded revision?",
                refusal("stamp production"))
    manager.stamp(revision)
    click.echo(f"Stamped {manager.masked_url} at {manager.get_current_revision() or 'base'}.")


# -- the run: retried after transient failures, reported step by step ---------------------------


def _migrate(
    ctx: click.Context,
    manager: MigrationManager,
    action,
    revision: str,
    retries: int,
    verb: str,
    each_step: bool,
    say=click.echo,
) -> list[str]:
    # Imported here: the migration package, 1.4 s that `--help` skips (orchestrator.cli).
    from orchestrator.migrations import (
        ConnectionLostError,
        DatabaseUnreachableError,
        MigrationLockLost,
        TransientDatabaseError,
    )

    meta = ctx.find_root().meta
    lost = False
    for attempt in range(retries + 1):
        steps = _Steps(manager, each_step, say)
        manager.progress = steps
        meta.pop("orchestrator.waited", None)
        try:
            done = action(revision)
        except (TransientDatabaseError, MigrationLockLost, DatabaseUnreachableError) as exc:
            # A server that ended our connection may take a while to come back: reaching it
            # is retried too, after a loss (not a wrong URL from the start).
            lost = lost or isinstance(exc, (ConnectionLostError, MigrationLockLost))
            if attempt == retries or not (lost or isinstance(exc, TransientDatabaseError)):
                raise
            # Back off, so the transaction in the way has a chance to finish (or the server to
            # come back); then reconnect, take the lock again and plan afresh.
            delay = min(0.5 * 2**attempt, 10.0)
            note(f"{exc} (retry {attempt + 1} of {retries} in {delay:g}s)")
            manager.close()
            time.sleep(delay)
            continue
        # Time spent waiting for another migrator is not time spent migrating: said apart.
        wait = manager.lock_wait if meta.pop("orchestrator.waited", False) else None
        if done:
            after = f", after waiting {wait:.2f}s for another migrator" if wait is not None else ""
            say(f"{verb} {', '.join(done)} in {steps.seconds:.2f}s{after}.")
        else:
            # We planned before taking the lock; the migrator that held it did the work.
            waited = f" ({wait:.2f}s)" if wait is not None else ""
            say(f"Nothing to do: another migrator already did it while we waited{waited}.")
        return done
    return []  # pragma: no cover - the loop returns or raises


class _Steps:
    """Reports a running migration: the backup taken first, then each revision as it is done."""

    def __init__(self, manager: MigrationManager, each_step: bool, say=click.echo) -> None:
        self.manager = manager
        self.each_step = each_step
        self.say = say
        self.seconds = 0.0
        self._started = False

    def __call__(self, revision: str, seconds: float) -> None:
        if not self._started:
            self._started = True
            # The backup is done: its bar (on a terminal, on stderr) stops first, or what is
            # said next is written into its line while it keeps redrawing.
            close_bar = getattr(self.manager.backup_progress, "close", None)
            if close_bar is not None:
                close_bar()
            # Taken before the first step ran (the manager sets it before migrating).
            print_backup_taken(self.manager, self.say)
        self.seconds += seconds
        if self.each_step:
            self.say(f"  {revision}  {seconds:6.2f}s  {title(self.manager, revision)}")
