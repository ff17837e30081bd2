"""The `db` commands that judge the migrations before they run: validate (the rules) and
rehearse (a run on a copy)."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.options import (
    MAX_BLOCKING,
    REVISION_ARGS,
    common_options,
    complete_revisions,
    manager_for,
    note,
    revision_argument,
    settings_for,
)
from orchestrator.cli.progress import ValidationProgress
from orchestrator.cli.render import echo_json, print_validation
from orchestrator.errors import BadInputError, ExitCode


@click.command()
@common_options
@click.option("--strict", is_flag=True, help="Dangerous operations are errors, not warnings.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (the same as --format json).")
@click.option("--since", metavar="REV",
              help="Run the round trip and the dangerous-operation rules only on the "
                   "revisions after REV; the other rules still check every revision.")
@click.option("--since-git", metavar="REF",
              help="As --since, with the newest revision whose script is on git REF "
                   "(e.g. origin/main).")
@click.pass_context
def validate(ctx: click.Context, strict: bool, output_format: str, as_json: bool,
             since: str | None, since_git: str | None) -> None:
    """Check the migrations; exits 1 when a rule finds an error."""
    # Imported here: SQLAlchemy and the validator, 1.5 s that `--help` skips (orchestrator.cli).
    from orchestrator.db import mask_url
    from orchestrator.migrations.validate import RULES, newest_revision_on_git_ref
    from orchestrator.migrations.validate import validate as run_rules

    if since is not None and since_git is not None:
        raise BadInputError("--since and --since-git: give one of them")
    settings = settings_for(ctx)
    # The manager's scripts folder: the one every other command loads.
    script_location = manager_for(ctx).script_location
    git_note = None
    if since_git is not None:
        since = newest_revision_on_git_ref(since_git, settings.database_url, script_location)
        if since is None:
            git_note = f"since-git {since_git}: no revision of the chain is on {since_git}; " \
                       "every revision was checked"
    progress = ValidationProgress()
    ctx.call_on_close(progress.close)
    try:
        report = run_rules(settings.database_url, strict=strict, since=since, progress=progress,
                           script_location=script_location)
    finally:
        progress.close()
    if as_json or output_format == "json":
        document = {"database": mask_url(settings.database_url), **report.as_dict()}
        if since_git is not None:
            document["since_git"] = {"ref": since_git, "revision": since}
        echo_json(document)
    else:
        if git_note:
            click.echo(git_note)
        print_validation(report, {rule.code: rule.name for rule in RULES})
    if not report.ok:
        ctx.exit(ExitCode.CHECK_FAILED)


@click.command(context_settings=REVISION_ARGS)
@common_options
@click.argument("revision", default="head", callback=revision_argument,
                shell_complete=complete_revisions)
@click.option("--from-backup", type=click.Path(dir_okay=True, path_type=Path), metavar="FILE",
              help="Rehearse on a copy restored from this backup, not from the database.")
@click.option("--keep", is_flag=True, help="Keep the copy afterwards (its name is printed).")
@MAX_BLOCKING
@click.option("--allow-changed", is_flag=True,
              help="Rehearse even though applied scripts were edited since (as db upgrade).")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.pass_context
def rehearse(ctx: click.Context, revision: str, from_backup: Path | None, keep: bool,
             max_blocking: float, allow_changed: bool, output_format: str,
             as_json: bool) -> None:
    """Run the pending migrations on a copy and report what they lock, rewrite and cost;
    exits 1 when one fails or blocks writes for longer than --max-blocking."""
    # Imported here: the migration package and the rehearsal, 1.4 s that `--help` skips.
    from orchestrator.migrations.rehearse import rehearse as run_rehearsal
    from orchestrator.migrations.rehearse import render_text

    manager = manager_for(ctx)
    rehearsal = run_rehearsal(manager, revision, from_backup=from_backup, keep=keep,
                              max_blocking=max_blocking, allow_changed=allow_changed,
                              notify=note)
    if as_json or output_format == "json":
        echo_json(rehearsal.as_dict())
    else:
        click.echo(render_text(rehearsal))
    ctx.exit(rehearsal.exit_code)
