"""`db rebase`: renumber this branch's migrations after the other line's, downgrading a
development database that applied them under their old ids first."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.cli.options import common_options, confirm, manager_for, note, refusal
from orchestrator.cli.progress import progress
from orchestrator.cli.render import relative

if TYPE_CHECKING:
    from orchestrator.migrations import MigrationManager


@click.command()
@common_options
@click.option("--onto", metavar="BRANCH",
              help="The git branch (or commit) whose migrations stay (default: origin/HEAD, "
              "else main, else master).")
@click.option("--keep", metavar="REVISION",
              help="The last migration that stays, by revision id or file name (no git needed).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True,
              help="Downgrade a development database that applied moved migrations, unasked.")
@click.pass_context
def rebase(ctx: click.Context, onto: str | None, keep: str | None, dry_run: bool,
           yes: bool) -> None:
    """Renumber this branch's migrations after the other line's (two branches added 005)."""
    # Imported here: the migration package, 1.4 s that `--help` skips (orchestrator.cli).
    from orchestrator.migrations import forks
    from orchestrator.migrations import rebase as rebasing
    from orchestrator.migrations.errors import DatabaseUnreachableError

    if onto is not None and keep is not None:
        raise click.UsageError("--onto chooses the line that stays by git, --keep without it: "
                               "give one of them", ctx=ctx)
    manager = manager_for(ctx)
    versions = Path(manager.script.versions)
    if dry_run and (versions / forks.JOURNAL).exists():
        raise rebasing.RebaseError(forks.INTERRUPTED.format(folder=relative(str(versions))))
    finished = rebasing.resume(versions)
    if finished:
        click.echo("Finished the renames of an interrupted `db rebase`: "
                   f"{', '.join(f'{old} -> {new}' for old, new in finished)}.")
    plan = rebasing.plan(versions, keep=keep, onto=onto)
    if plan is None:
        click.echo(f"Nothing to rebase: the migrations in {relative(str(versions))} form one "
                   "line.")
        return
    click.echo(f"Staying: {plan.chosen_by}, up to {plan.onto or 'base'}.")
    click.echo(f"{'Would move' if dry_run else 'Moving'} {len(plan.moves)} "
               f"migration{'s' * (len(plan.moves) != 1)} on top:")
    for move in plan.moves:
        click.echo(f"  {move.describe()}")
    try:
        applied = rebasing.applied_moves(plan, *manager.recorded_revision())
    except DatabaseUnreachableError as exc:
        applied = None
        note(f"Note: the database could not be read ({exc}); if it applied any of these "
             "migrations, downgrade it from this branch as it was before the merge, then "
             "`orchestrator db upgrade` after the rebase.")
    if applied is not None:
        _undo_moved(ctx, manager, plan, applied, dry_run, yes)
    if dry_run:
        click.echo("Dry run: nothing was changed.")
        return
    rebasing.apply(plan)
    click.echo("Done. Review and commit the renamed files, then run `orchestrator db upgrade`.")


def _undo_moved(ctx: click.Context, manager: MigrationManager, plan, applied, dry_run: bool,
                yes: bool) -> None:
    """A database that applied moved migrations under their old ids: downgraded to the fork
    point with those scripts, before they are renamed (development only)."""
    # Imported here: the migration package, 1.4 s that `--help` skips (orchestrator.cli).
    from orchestrator.migrations import rebase as rebasing

    names = ", ".join(ref.name for ref in applied.scripts)
    fork = applied.fork_point or "base"
    click.echo(f"The database {manager.masked_url} applied {names} under the old "
               f"revision{'s' * (len(applied.scripts) != 1)}; once renumbered they are new "
               f"revisions, so it must go back to {fork} first.")
    if not manager.environment.is_disposable:
        raise rebasing.RebaseError(
            f"refusing to downgrade a {manager.environment} database from `db rebase`, and to "
            f"rename scripts it applied; go back to {fork} by hand: from a checkout of this "
            f"branch as it was before the merge run `orchestrator db downgrade {fork}` (or "
            "restore a backup taken before), then `orchestrator db rebase` and `orchestrator "
            "db upgrade`")
    if dry_run:
        click.echo(f"Would downgrade it to {fork} first, with the scripts under their old ids.")
        return
    if not yes:
        confirm(f"Downgrade the database to {fork} now, with the scripts under their old ids?",
                refusal("downgrade the database"))
    with tempfile.TemporaryDirectory(prefix="orchestrator-rebase-") as folder:
        scripts = rebasing.old_line_scripts(plan, applied, Path(manager.script.dir),
                                            Path(folder) / "scripts")
        with manager.with_scripts(scripts) as old:
            old.backup_progress = progress(ctx, "Backing up first")
            undone = old.downgrade(fork)
    click.echo(f"Undid {', '.join(undone)}: the database is at {fork}.")
