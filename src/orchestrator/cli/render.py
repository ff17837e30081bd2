"""How the commands show their results: the status, the history, a revision, a downgrade's
plan, the validator's report, as text or as JSON (docs/migrations.md). Nothing here reads a
database; each function is handed what it shows."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from orchestrator.migrations import MigrationManager, MigrationStatus, RevisionInfo


def echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


def first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def title(manager: MigrationManager, revision: str) -> str:
    """The first line of the revision's docstring."""
    return first_line(manager.script.get_revision(revision).doc)


def relative(path: str) -> str:
    """`path` relative to the working directory when it is below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover - the loop always returns


# -- the database's state (`db current`, `db status`, `db check`) -------------------------------


def describe_current(status: MigrationStatus) -> str:
    if not status.database_exists:
        return "none (the database does not exist yet)"
    if status.current is None:
        return "none (not under version control)" if status.unversioned else "none (empty database)"
    suffix = " (head)" if status.up_to_date else " (unknown to this code)" if status.ahead else ""
    return f"{status.current}{suffix}"


def print_status(
    manager: MigrationManager, status: MigrationStatus, as_json: bool, changed: list | None = None
) -> None:
    if as_json:
        document = {"database": manager.masked_url, **status.as_dict()}
        document["changed_scripts"] = [c.as_dict() for c in changed or ()]
        echo_json(document)
        return
    click.echo(f"database: {manager.masked_url}")
    click.echo(f"current:  {describe_current(status)}")
    click.echo(f"head:     {status.head or 'none'}")
    if status.interrupted is not None:
        click.echo(f"INTERRUPTED: {status.interrupted.describe()}")
    if status.read_only:
        click.echo(
            "READ-ONLY: new sessions of this database cannot write "
            "(default_transaction_read_only is on); if that is left from a restore of an "
            f"earlier version that was killed, run `{manager.make_writable_statement()}` as its "
            "owner"
        )
    if status.ahead:
        click.echo("state:    the database is AHEAD of the code")
    elif status.unversioned:
        click.echo("state:    tables exist but no revision is recorded (see `db stamp`)")
    elif status.up_to_date:
        click.echo("state:    up to date")
    elif not status.pending and status.interrupted is not None:
        # Nothing to upgrade (a downgrade from head was interrupted and rolled back): the
        # step's own line says what completes it.
        click.echo(f"state:    a step did not finish; {status.interrupted.remedy} "
                   "(see INTERRUPTED above)")
    else:
        click.echo(f"pending:  {', '.join(status.pending)}")
        click.echo("state:    migrations pending; run `orchestrator db upgrade`")
    for script in changed or ():
        click.echo(
            f"EDITED:   {script.revision} ({script.path}) changed since it was applied on "
            f"{script.applied_at:%Y-%m-%d %H:%M} UTC; see `orchestrator db validate`"
        )


# -- the recorded steps (`db history`, `db show`) ------------------------------------------------


def describe_step(entry) -> str:
    if entry.interrupted:
        return (
            f"{entry.direction} started {entry.started_at:%Y-%m-%d %H:%M:%S} UTC and did not "
            f"finish (interrupted), {entry.os_user}@{entry.host}, v{entry.tool_version}"
        )
    outcome = "ok" if entry.success else "FAILED"
    text = (
        f"{entry.direction} {outcome} {entry.started_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"{entry.duration:.2f}s, {entry.os_user}@{entry.host}, v{entry.tool_version}"
    )
    if entry.error:
        text += f": {entry.error.strip().splitlines()[0]}"
    return text


def _is_ahead(current: str | None, scripts: list[RevisionInfo]) -> bool:
    return current is not None and current not in {info.revision for info in scripts}


def history_document(database: str, current: str | None, scripts: list[RevisionInfo],
                     applied: list, edited: set[str]) -> dict[str, Any]:
    """`db history --json`: every revision with its state and last step, and every step."""
    ahead = _is_ahead(current, scripts)
    last = {entry.revision: entry for entry in applied}
    return {
        "database": database,
        "current": current,
        "head": next((info.revision for info in scripts if info.is_head), None),
        "revisions": [
            {
                "revision": info.revision,
                "down_revision": info.down_revision,
                "message": info.message,
                "path": info.path,
                "state": "unknown" if ahead else "applied" if info.applied else "pending",
                "is_head": info.is_head,
                "edited": info.revision in edited,
                "last_step": last[info.revision].as_dict() if info.revision in last else None,
            }
            for info in scripts
        ],
        "steps": [entry.as_dict() for entry in applied],
    }


def print_history(current: str | None, scripts: list[RevisionInfo], applied: list,
                  edited: set[str], full_log: bool) -> None:
    """`db history`: one line per revision, then (with --log) every recorded step."""
    ahead = _is_ahead(current, scripts)
    last = {entry.revision: entry for entry in applied}
    if ahead:
        click.echo(f"The database is at {current}, which these scripts do not know: whether each "
                   "script below was applied cannot be told from its revision.")
    for info in scripts:
        marks = ["?" if ahead else "applied" if info.applied else "pending"]
        if info.is_head:
            marks.append("head")
        if info.revision in edited:
            marks.append("EDITED since applied")
        line = f"{info.revision}  [{', '.join(marks)}]  {first_line(info.message)}"
        if info.revision in last:
            line += f"  <- {describe_step(last[info.revision])}"
        click.echo(line)
    if full_log:
        click.echo("")
        click.echo("Recorded steps, oldest first:" if applied else "No steps recorded yet.")
        for entry in applied:
            click.echo(f"  {entry.revision:<6} {describe_step(entry)}")


def why_state(status: MigrationStatus) -> str:
    """Why a revision's state is what `db show` says, when the revision alone does not say."""
    if status.ahead:
        return f" (the database is at {status.current}, which these scripts do not know)"
    if status.unversioned:
        return " (the database has tables but no revision)"
    if not status.database_exists:
        return " (the database does not exist yet)"
    return ""


def print_recorded(state: str, status: MigrationStatus, database: str, steps: list,
                   message: str) -> None:
    """The part of `db show` read from the database: its state, its steps, then the docstring."""
    click.echo(f"state:    {state}{why_state(status)} in {database}")
    click.echo("recorded: " + ("none" if not steps else describe_step(steps[0])))
    for entry in steps[1:]:
        click.echo(f"          {describe_step(entry)}")
    if message:
        click.echo("")
        for line in message.splitlines():
            click.echo(f"    {line}".rstrip())


# -- what a change does (`db upgrade`, `db downgrade`) -------------------------------------------


def print_downgrade_plan(manager: MigrationManager, plan: list[str], destination: str,
                         preview, say) -> None:
    """What a downgrade undoes, revision by revision, and what it destroys."""
    say(f"Downgrading {manager.masked_url} from {plan[0]} to {destination}; this undoes:")
    for rev in plan:
        say(f"  {rev}  {title(manager, rev)}")
    _print_preview(preview, manager, say)


def _print_preview(preview, manager: MigrationManager, say) -> None:
    """What a downgrade destroys, and whether (and why) a backup is taken first."""
    lines = preview.lines()
    if not lines:
        say("It drops no table or column.")
        return
    say("It destroys:")
    for line in lines:
        say(f"  {line}")
    if preview.loses_data:
        say("A backup is taken first (its path is printed when it is done).")
    elif manager.backup_before_migrate:
        say("They hold no data; a backup is taken first (BACKUP_BEFORE_MIGRATE).")
    else:
        say("They hold no data: no backup is needed.")


def print_backup_taken(manager: MigrationManager, say=click.echo) -> None:
    if manager.last_backup is not None:
        say(
            f"Backed up first, at {manager.last_backup.revision or 'base'}: "
            f"{manager.last_backup.path}"
        )


# -- the validator's report (`db validate`) ------------------------------------------------------


def print_validation(report, names: dict[str, str]) -> None:
    """The findings, the rules skipped and passed (`names`: each rule's name by code), then
    the verdict."""
    for finding in report.findings:
        location = finding.location
        if finding.file is not None:
            location = location.replace(finding.file, relative(finding.file))
        label = "ERROR" if finding.severity == "error" else "warning"
        click.echo(f"{label:<8}{finding.code} {finding.rule}  {location}".rstrip())
        click.echo(f"        {finding.message}")
        click.echo(f"        fix: {finding.fix}")
    for skipped in report.skipped:
        click.echo(f"skipped {skipped.code} {skipped.rule}: {skipped.reason}")
    if report.since is not None:
        click.echo(f"narrowed {report.since.describe()}")
    if report.passed:
        passed = ", ".join(f"{code} {names[code]}" for code in report.passed)
        click.echo(f"passed  {passed}")
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "FAILED" if errors else "OK"
    skipped = len(report.skipped)
    click.echo(
        f"{verdict}: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        + (f", {skipped} rule{'s' * (skipped != 1)} skipped" if skipped else "")
        + (" (strict)" if report.strict else "")
    )
