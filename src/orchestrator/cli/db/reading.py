"""The `db` commands that read and change nothing: current, status, check, history, show."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestrator.cli.options import (
    REVISION_ARGS,
    common_options,
    complete_revisions,
    manager_for,
    revision_argument,
)
from orchestrator.cli.render import (
    describe_current,
    echo_json,
    history_document,
    print_history,
    print_recorded,
    print_status,
    relative,
)
from orchestrator.errors import ExitCode

if TYPE_CHECKING:
    from orchestrator.migrations import MigrationStatus


@click.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON (docs/migrations.md).")
@click.option("--quiet", "-q", is_flag=True,
              help="Print only the revision id (nothing when the database has none).")
@click.pass_context
def current(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    """Print the database's revision."""
    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be combined", ctx=ctx)
    manager = manager_for(ctx)
    status = manager.status()
    if quiet:
        if status.current is not None:
            click.echo(status.current)
    elif as_json:
        document = {"database": manager.masked_url, **status.as_dict()}
        del document["pending"]
        echo_json(document)
    else:
        click.echo(describe_current(status))


@click.command()
@common_options
@click.option("--json", "as_json", is_flag=True,
              help="Print the status as JSON (docs/migrations.md).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show current, head and pending revisions, and applied scripts edited since."""
    manager = manager_for(ctx)
    print_status(manager, manager.status(), as_json, changed=manager.changed_scripts())


@click.command()
@common_options
@click.option("--json", "as_json", is_flag=True,
              help="Print the status as JSON (docs/migrations.md).")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Exit 0 when the database is at head, 1 when migrations are pending, 2+ on errors."""
    manager = manager_for(ctx)
    state = manager.status()
    print_status(manager, state, as_json, changed=manager.changed_scripts())
    manager.require_known_database(state)
    if not state.up_to_date:
        ctx.exit(ExitCode.CHECK_FAILED)


@click.command()
@common_options
@click.option("--log", "full_log", is_flag=True, help="Also list every recorded step.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the history, every recorded step included, as JSON (docs/migrations.md).")
@click.pass_context
def history(ctx: click.Context, full_log: bool, as_json: bool) -> None:
    """List every migration, oldest first, with what the database last recorded doing with it."""
    manager = manager_for(ctx)
    edited = {changed.revision for changed in manager.changed_scripts()}
    applied = manager.applied_history()
    scripts = manager.history()
    current = manager.get_current_revision()
    if as_json:
        echo_json(history_document(manager.masked_url, current, scripts, applied, edited))
        return
    print_history(current, scripts, applied, edited, full_log)
    interrupted = manager.status().interrupted
    if interrupted is not None:
        click.echo(f"INTERRUPTED: {interrupted.describe()}")


@click.command(context_settings=REVISION_ARGS)
@common_options
@click.argument("revision", callback=revision_argument, shell_complete=complete_revisions)
@click.option("--sql", is_flag=True,
              help="Print the SQL its upgrade runs, without a database (offline).")
@click.option("--down", is_flag=True,
              help="Print the SQL its downgrade runs, without a database (offline).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the description as JSON (docs/migrations.md).")
@click.pass_context
def show(ctx: click.Context, revision: str, sql: bool, down: bool, as_json: bool) -> None:
    """Show one revision: its file, state, recorded steps and docstring, or its SQL.

    REVISION is an id, a unique prefix of one, head, or -N/+N counted from the database's
    revision. --sql and --down print the SQL of its upgrade and of its downgrade, offline:
    no database is needed.
    """
    # Imported here: the migration package, 1.4 s that `--help` skips (orchestrator.cli).
    from orchestrator.migrations import UnknownRevisionError

    if as_json and (sql or down):
        raise click.UsageError("--json describes the revision; --sql and --down print its SQL: "
                               "give one or the other", ctx=ctx)
    if sql and down:
        raise click.UsageError("--sql prints the upgrade's SQL and --down the downgrade's: "
                               "give one of them", ctx=ctx)
    manager = manager_for(ctx)
    resolved = manager.resolve(revision)
    if resolved is None:
        raise UnknownRevisionError(f"{revision} is the state before any revision, not a "
                                   "revision; see `orchestrator db history`")
    script = manager.script.get_revision(resolved)
    parent = script.down_revision if isinstance(script.down_revision, str) else None
    if sql:
        click.echo(manager.sql(resolved, start=parent, direction="upgrade"), nl=False)
        return
    if down:
        click.echo(manager.sql(parent or "base", start=resolved, direction="downgrade"), nl=False)
        return
    message = (script.doc or "").strip()
    described = {
        "revision": resolved,
        "down_revision": parent,
        "message": message,
        "path": script.path,
        "is_head": resolved == manager.get_head_revision(),
    }
    if not as_json:
        # What the scripts say needs no database: shown before the database is read.
        click.echo(f"revision: {resolved}{' (head)' if described['is_head'] else ''}")
        click.echo(f"parent:   {parent or 'base'}")
        click.echo(f"file:     {relative(script.path)}")
    status = manager.status()
    steps = [entry for entry in manager.applied_history() if entry.revision == resolved]
    state = _state(resolved, status)
    if as_json:
        echo_json({**described, "database": manager.masked_url, "state": state,
                   "steps": [entry.as_dict() for entry in steps]})
        return
    print_recorded(state, status, manager.masked_url, steps, message)


def _state(revision: str, status: MigrationStatus) -> str:
    """Whether the database applied `revision`: applied, pending, or unknown (a database
    ahead of the scripts, or without a revision)."""
    if status.ahead or status.unversioned:
        return "unknown"
    if status.current is not None and revision not in status.pending:
        return "applied"
    return "pending"
