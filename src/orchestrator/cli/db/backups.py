"""The `db` commands for backups: backup, backups (the list), restore."""

from __future__ import annotations

import time
from pathlib import Path

import click

from orchestrator.cli.options import common_options, confirm, manager_for, refusal
from orchestrator.cli.progress import progress
from orchestrator.cli.render import echo_json, size


@click.command()
@common_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the backup to FILE instead of a new file in BACKUP_DIR.",
)
@click.pass_context
def backup(ctx: click.Context, output: Path | None) -> None:
    """Back up the database (into BACKUP_DIR, keeping the newest BACKUP_KEEP)."""
    manager = manager_for(ctx)
    started = time.perf_counter()
    info = manager.backup(output, progress=progress(ctx, "Backing up"))
    click.echo(
        f"Backed up {manager.masked_url} at revision {info.revision or 'base'} to {info.path} "
        f"({size(info.size)} in {time.perf_counter() - started:.2f}s)."
    )


@click.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def backups(ctx: click.Context, as_json: bool) -> None:
    """List this database's backups in BACKUP_DIR, newest first."""
    manager = manager_for(ctx)
    found = manager.backups()
    if as_json:
        echo_json([info.as_dict() for info in found])
        return
    if not found:
        click.echo(f"No backups of {manager.masked_url} in {manager.backup_dir}.")
        return
    for info in found:
        click.echo(
            f"{info.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{'?' if info.reason == 'damaged' else info.revision or 'base':<6}  "
            f"{info.reason:<17} {size(info.size):>9}  {info.path}"
        )


@click.command()
@common_options
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--other-database", is_flag=True,
              help="Restore a backup whose sidecar names another database.")
@click.pass_context
def restore(ctx: click.Context, file: Path, yes: bool, other_database: bool) -> None:
    """Replace the database with the backup FILE (its current state is backed up first)."""
    # Imported here: the migration package, 1.4 s that `--help` skips (orchestrator.cli).
    from orchestrator.migrations.backup import restorable

    manager = manager_for(ctx)
    # Refuse a wrong file before asking anything.
    info = restorable(manager.database_url, file, other_database=other_database)
    taken = (
        f"revision {info.revision or 'base'}, taken {info.created_at:%Y-%m-%d %H:%M:%S} UTC"
        if info.database is not None
        else "no sidecar: revision unknown"
    )
    click.echo(f"Restoring {manager.masked_url} from {file} ({taken}).")
    click.echo("This replaces the database's whole content; until it is done no other "
               "connection can write to it.")
    if not yes:
        confirm("Replace the database's content with the backup?", refusal("restore"))
    report = manager.restore(file, progress=progress(ctx, "Restoring"),
                             other_database=other_database)
    if report.safety_backup is not None:
        click.echo(f"Saved the state it replaced to {report.safety_backup.path} first.")
    if report.unversioned:
        click.echo("Restored; the database has tables but no migration revision: check its "
                   "schema, then record the revision it matches with `orchestrator db stamp "
                   "<revision>`.")
    else:
        click.echo(f"Restored; the database is at {report.revision or 'base'}.")
