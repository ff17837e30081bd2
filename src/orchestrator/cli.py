"""The `orchestrator` command.

Imports stay cheap: `orchestrator db ...` never imports FastAPI or uvicorn (only `serve` does),
and heavy modules are imported inside the command that needs them. Errors are printed once, as
one line, by `main()`; `--verbose` adds the traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from orchestrator.errors import BadInputError, ExitCode, OrchestratorError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from orchestrator.migrations import MigrationManager, MigrationStatus
    from orchestrator.settings import Settings

# Environment's values (orchestrator.settings), spelled out: importing the settings here would
# load pydantic for every command, `--help` included.
ENVIRONMENTS = ("development", "staging", "production")
# Click's shell completion: `_ORCHESTRATOR_COMPLETE=bash_source orchestrator` prints the script.
COMPLETE_VAR = "_ORCHESTRATOR_COMPLETE"


# -- options shared by `orchestrator` and every `db` command ------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if param.name == "database_url" and value is not None and not value.strip():
        # `--database-url "$URL"` with URL unset must not fall back to another database.
        raise click.BadParameter("it is empty; give a URL, or leave the option out to use "
                                 "DATABASE_URL", ctx=ctx, param=param)
    # Options given on a subcommand override the same options given on `orchestrator` itself.
    if value is not None and value is not False:
        ctx.find_root().meta[f"orchestrator.{param.name}"] = value
    return value


def common_options(func):
    """--env, --database-url and --verbose, accepted on the group and on each command."""
    options = [
        click.option(
            "--env",
            "environment",
            type=click.Choice(ENVIRONMENTS),
            callback=_remember,
            expose_value=False,
            help="Environment (overrides ENVIRONMENT).",
        ),
        click.option(
            "--database-url",
            callback=_remember,
            expose_value=False,
            metavar="URL",
            help="Database URL (overrides DATABASE_URL).",
        ),
        click.option(
            "--verbose",
            "-v",
            is_flag=True,
            default=None,
            callback=_remember,
            expose_value=False,
            help="Show tracebacks and debug logging.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _option(ctx: click.Context, name: str) -> Any:
    return ctx.find_root().meta.get(f"orchestrator.{name}")


def _settings(ctx: click.Context) -> Settings:
    from orchestrator.settings import load_settings

    return load_settings(
        environment=_option(ctx, "environment"), database_url=_option(ctx, "database_url")
    )


def _manager(ctx: click.Context, **kwargs: Any) -> MigrationManager:
    from orchestrator.migrations import MigrationManager

    settings = _settings(ctx)
    if kwargs.get("lock_timeout") is None:
        kwargs.pop("lock_timeout", None)

    def waiting(message: str) -> None:
        # The manager speaks only when it has to wait for another migrator's lock.
        ctx.find_root().meta["orchestrator.waited"] = True
        _note(message)

    manager = MigrationManager.from_settings(settings, notify=waiting, **kwargs)
    ctx.call_on_close(manager.close)
    return manager


def _note(message: str) -> None:
    click.echo(message, err=True)


def _echo_json(document: Any) -> None:
    import json

    click.echo(json.dumps(document, indent=2))


class _Duration(click.ParamType):
    """Seconds, as the settings read them: `30`, `500ms`, `30s` or `5min`."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        from orchestrator.settings import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _revision_argument(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """REVISION takes -1 (so unknown options reach it): anything else that looks like an option
    is one this command does not have."""
    from orchestrator.migrations.chain import is_relative

    if value is not None and value.startswith("-") and not is_relative(value.split(":")[0]):
        raise click.NoSuchOption(value, ctx=ctx)
    return value


def _complete_revisions(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The scripts' revision ids (with their titles), head and base; no database is read."""
    from click.shell_completion import CompletionItem

    import warnings

    try:
        from alembic.script import ScriptDirectory

        from orchestrator.migrations.manager import alembic_config

        scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
        # Nor a warning (two scripts with one id, after a merge): the next command says it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            revisions = list(reversed(list(scripts.walk_revisions())))
    except Exception:  # a completion must never print a traceback into the shell
        return []
    items = [CompletionItem(rev.revision, help=_first_line(rev.doc)) for rev in revisions]
    items += [CompletionItem("head", help="the newest revision"),
              CompletionItem("base", help="before the first revision")]
    return [item for item in items if item.value.startswith(incomplete)]


def _must_ask(manager: MigrationManager, yes: bool) -> bool:
    """Whether a command that takes the database back asks first (production, without --yes)."""
    return manager.environment.asks_before_downgrade and not yes


def _refusal(what: str) -> str:
    """What a command that must ask says when there is no terminal to ask on."""
    return f"refusing to {what} without confirmation; run it on a terminal or pass --yes"


def _confirm(question: str, refusal: str) -> None:
    """Ask on a terminal (a no ends the command, exit 1); without one, refuse with `refusal`."""
    from orchestrator.migrations import ConfirmationRequired

    if not sys.stdin.isatty():
        raise ConfirmationRequired(refusal)
    # On stderr, so that the question shows even when stdout goes to a file.
    try:
        if click.confirm(question, err=True):
            return
        # The terminal echoed the answer and its newline; stderr elsewhere did not see it.
        line_open = not sys.stderr.isatty()
    except click.Abort:  # Ctrl-C or end of input: the question's line is still open
        line_open = True
    if line_open:
        click.echo("", err=True)
    raise click.Abort()


# -- the commands -------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.version_option(package_name="orchestrator")
def cli() -> None:
    """Orchestrator: the API server and its database migrations."""


@cli.command()
@common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes (uvicorn workers), each applying the start-up checks.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Serve the API (development migrates its database first)."""
    import logging

    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.migrations.startup import prepare_database

    logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(name)s: %(message)s")
    # Alembic announces its plugins and each step at INFO; start-up logs each step once itself.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = _settings(ctx)
    # Apply the start-up policy before uvicorn starts, so that a database that must stop
    # start-up gives the usual one-line error instead of a lifespan traceback; the lifespan
    # is handed the result rather than applying the policy (and logging it) a second time.
    with _manager(ctx) as manager:
        report = prepare_database(settings, manager)
    if workers == 1:
        uvicorn.run(create_app(settings, startup=report), host=host, port=port, log_level="info")
        return
    # Each worker process builds the app from the environment and applies the start-up policy
    # in its lifespan: the database is at head by now, and were it not, the migration lock
    # lets one worker migrate while the others wait and then find nothing to do.
    os.environ["ENVIRONMENT"] = settings.environment.value
    os.environ["DATABASE_URL"] = settings.database_url
    uvicorn.run("orchestrator.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="info")


@cli.group()
@common_options
def db() -> None:
    """Inspect and migrate the database schema."""


@db.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON (docs/migrations.md).")
@click.option("--quiet", "-q", is_flag=True,
              help="Print only the revision id (nothing when the database has none).")
@click.pass_context
def current(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    """Print the database's revision."""
    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be combined", ctx=ctx)
    manager = _manager(ctx)
    status = manager.status()
    if quiet:
        if status.current is not None:
            click.echo(status.current)
    elif as_json:
        document = {"database": manager.masked_url, **status.as_dict()}
        del document["pending"]
        _echo_json(document)
    else:
        click.echo(_describe_current(status))


@db.command()
@common_options
@click.option("--json", "as_json", is_flag=True,
              help="Print the status as JSON (docs/migrations.md).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show current, head and pending revisions, and applied scripts edited since."""
    manager = _manager(ctx)
    _print_status(manager, manager.status(), as_json, changed=manager.changed_scripts())


@db.command()
@common_options
@click.option("--json", "as_json", is_flag=True,
              help="Print the status as JSON (docs/migrations.md).")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Exit 0 when the database is at head, 1 when migrations are pending, 2+ on errors."""
    manager = _manager(ctx)
    state = manager.status()
    _print_status(manager, state, as_json, changed=manager.changed_scripts())
    manager.require_known_database(state)
    if not state.up_to_date:
        ctx.exit(ExitCode.CHECK_FAILED)


# REVISION may be relative ("-1", "+2"): it must not be parsed as an option.
_REVISION_ARGS = {"ignore_unknown_options": True}


_LOCK_TIMEOUT = click.option(
    "--lock-timeout", type=_Duration(), metavar="DURATION",
    help="How long to wait for another migrator: seconds, or with ms, s or min "
    "(default MIGRATION_LOCK_TIMEOUT).",
)
_MAX_BLOCKING = click.option(
    "--max-blocking", type=_Duration(), default="1s", show_default=True, metavar="SECONDS",
    help="Longest time a migration may block writes to a table that has rows.")
_RETRIES = click.option("--retries", type=click.IntRange(min=0), default=0,
                        help="Retries after a transient failure: a table-lock timeout, a "
                        "deadlock, a lost connection or migration lock.")


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision", default="head", callback=_revision_argument,
                shell_complete=_complete_revisions)
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (REV may be START:END).")
@_LOCK_TIMEOUT
@_RETRIES
@click.option(
    "--allow-changed",
    is_flag=True,
    help="Upgrade even though applied scripts were edited since (staging, production).",
)
@click.option("--rehearse", "rehearse_first", is_flag=True,
              help="Rehearse on a copy first (`db rehearse`); upgrade only if it passes.")
@_MAX_BLOCKING
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
    import functools

    manager = _manager(ctx, lock_timeout=lock_timeout)
    if sql and rehearse_first:
        raise BadInputError("--rehearse runs the migrations on a copy; it cannot go with --sql")
    if rehearse_first and manager.plan_upgrade(revision):
        from orchestrator.migrations.rehearse import rehearse, render_text

        rehearsal = rehearse(manager, revision, max_blocking=max_blocking,
                             allow_changed=allow_changed, notify=_note)
        click.echo(render_text(rehearsal))
        click.echo("")
        if not rehearsal.ok:
            _note(f"Not upgrading: the rehearsal failed ({rehearsal.problems()[0]}).")
            ctx.exit(ExitCode.CHECK_FAILED)
    if sql:
        from orchestrator.migrations.chain import split_range

        start, end = split_range(revision)
        click.echo(manager.sql(end or "head", start=start, direction="upgrade"), nl=False)
        return
    plan = manager.plan_upgrade(revision)
    current = manager.get_current_revision()
    if not plan:
        click.echo(f"Already at {current or 'base'}: nothing to apply.")
        return
    click.echo(f"Upgrading {manager.masked_url} from {current or 'base'} to {plan[-1]}:")
    manager.backup_progress = _progress(ctx, "Backing up first")
    # To the revision planned, not REVISION again: a relative one (+1) counted afresh after a
    # wait for the lock would go further than said above.
    _migrate(ctx, manager, functools.partial(manager.upgrade, allow_changed=allow_changed),
             plan[-1], retries, "Applied", each_step=True)


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision", callback=_revision_argument, shell_complete=_complete_revisions)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--dry-run", is_flag=True,
              help="List what it would undo and destroy, and change nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the plan, what it destroys and what was done as JSON "
                   "(docs/migrations.md).")
@_LOCK_TIMEOUT
@_RETRIES
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
    manager = _manager(ctx, lock_timeout=lock_timeout)
    if sql:
        from orchestrator.migrations.chain import split_range

        start, end = split_range(revision)
        start = start or manager.get_current_revision() or "head"
        click.echo(manager.sql(end, start=start, direction="downgrade"), nl=False)
        return
    plan = manager.plan_downgrade(revision)
    current = manager.get_current_revision()
    destination = (manager.script.get_revision(plan[-1]).down_revision or "base") if plan else None
    preview = manager.preview_downgrade(plan) if plan else None
    say = _note if as_json else click.echo
    document: dict[str, Any] = {
        "database": manager.masked_url,
        "from": current,
        "to": destination,
        "undoes": [{"revision": rev, "title": _title(manager, rev)} for rev in plan],
        "destroys": preview.as_dict() if preview else None,
        "dry_run": dry_run,
        "undone": [],
        "backup": None,
    }
    if not plan:
        document["to"] = current
        say(f"Already at {current or 'base'}: nothing to undo.")
        if as_json:
            _echo_json(document)
        return
    say(f"Downgrading {manager.masked_url} from {plan[0]} to {destination}; this undoes:")
    for rev in plan:
        say(f"  {rev}  {_title(manager, rev)}")
    _print_preview(preview, manager, say)
    if dry_run:
        say("Dry run: nothing was changed.")
        if as_json:
            _echo_json(document)
        return
    if _must_ask(manager, yes):
        _confirm("Downgrade the production database?", _refusal("downgrade production"))
    manager.backup_progress = _progress(ctx, "Backing up first")
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
        _echo_json(document)


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


@db.command()
@common_options
@click.option("--log", "full_log", is_flag=True, help="Also list every recorded step.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the history, every recorded step included, as JSON (docs/migrations.md).")
@click.pass_context
def history(ctx: click.Context, full_log: bool, as_json: bool) -> None:
    """List every migration, oldest first, with what the database last recorded doing with it."""
    manager = _manager(ctx)
    edited = {changed.revision for changed in manager.changed_scripts()}
    applied = manager.applied_history()
    last = {entry.revision: entry for entry in applied}
    scripts = manager.history()
    current = manager.get_current_revision()
    ahead = current is not None and current not in {info.revision for info in scripts}
    if as_json:
        _echo_json({
            "database": manager.masked_url,
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
        })
        return
    if ahead:
        click.echo(f"The database is at {current}, which these scripts do not know: whether each "
                   "script below was applied cannot be told from its revision.")
    for info in scripts:
        marks = ["?" if ahead else "applied" if info.applied else "pending"]
        if info.is_head:
            marks.append("head")
        if info.revision in edited:
            marks.append("EDITED since applied")
        line = f"{info.revision}  [{', '.join(marks)}]  {_first_line(info.message)}"
        if info.revision in last:
            line += f"  <- {_describe_step(last[info.revision])}"
        click.echo(line)
    if full_log:
        click.echo("")
        click.echo("Recorded steps, oldest first:" if applied else "No steps recorded yet.")
        for entry in applied:
            click.echo(f"  {entry.revision:<6} {_describe_step(entry)}")
    interrupted = manager.status().interrupted
    if interrupted is not None:
        click.echo(f"INTERRUPTED: {interrupted.describe()}")


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision", callback=_revision_argument, shell_complete=_complete_revisions)
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
    from orchestrator.migrations import UnknownRevisionError

    if as_json and (sql or down):
        raise click.UsageError("--json describes the revision; --sql and --down print its SQL: "
                               "give one or the other", ctx=ctx)
    if sql and down:
        raise click.UsageError("--sql prints the upgrade's SQL and --down the downgrade's: "
                               "give one of them", ctx=ctx)
    manager = _manager(ctx)
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
        click.echo(f"file:     {_relative(script.path)}")
    status = manager.status()
    steps = [entry for entry in manager.applied_history() if entry.revision == resolved]
    if status.ahead or status.unversioned:
        state = "unknown"
    elif status.current is not None and resolved not in status.pending:
        state = "applied"
    else:
        state = "pending"
    if as_json:
        _echo_json({**described, "database": manager.masked_url, "state": state,
                    "steps": [entry.as_dict() for entry in steps]})
        return
    click.echo(f"state:    {state}{_why_state(status)} in {manager.masked_url}")
    click.echo("recorded: " + ("none" if not steps else _describe_step(steps[0])))
    for entry in steps[1:]:
        click.echo(f"          {_describe_step(entry)}")
    if message:
        click.echo("")
        for line in message.splitlines():
            click.echo(f"    {line}".rstrip())


def _why_state(status: MigrationStatus) -> str:
    """Why a revision's state is what `db show` says, when the revision alone does not say."""
    if status.ahead:
        return f" (the database is at {status.current}, which these scripts do not know)"
    if status.unversioned:
        return " (the database has tables but no revision)"
    if not status.database_exists:
        return " (the database does not exist yet)"
    return ""


def _describe_step(entry) -> str:
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


@db.command()
@common_options
@click.option("-m", "--message", required=True, help="What the migration changes.")
@click.option("--empty", is_flag=True, help="Write an empty script to fill in by hand.")
@click.pass_context
def create(ctx: click.Context, message: str, empty: bool) -> None:
    """Write a new migration (autogenerated from the models unless --empty)."""
    path = _manager(ctx).create(message, autogenerate=not empty)
    click.echo(f"Created {path}")
    click.echo("Review it (docs/migrations.md), then run `orchestrator db upgrade`.")


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision", callback=_revision_argument, shell_complete=_complete_revisions)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (production).")
@click.pass_context
def stamp(ctx: click.Context, revision: str, yes: bool) -> None:
    """Record REVISION as the database's revision without running migrations."""
    manager = _manager(ctx)
    if _must_ask(manager, yes):
        target = manager.resolve(revision) or "base"  # a wrong revision fails before the question
        current = manager.get_current_revision() or "none"
        click.echo(f"Stamping {manager.masked_url}: its recorded revision goes from {current} "
                   f"to {target}, and no migration runs.")
        _confirm("Change the production database's recorded revision?",
                 _refusal("stamp production"))
    manager.stamp(revision)
    click.echo(f"Stamped {manager.masked_url} at {manager.get_current_revision() or 'base'}.")


@db.command()
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
    from orchestrator.migrations import forks
    from orchestrator.migrations import rebase as rebasing
    from orchestrator.migrations.errors import DatabaseUnreachableError

    if onto is not None and keep is not None:
        raise click.UsageError("--onto chooses the line that stays by git, --keep without it: "
                               "give one of them", ctx=ctx)
    manager = _manager(ctx)
    versions = Path(manager.script.versions)
    if dry_run and (versions / forks.JOURNAL).exists():
        raise rebasing.RebaseError(forks.INTERRUPTED.format(folder=_relative(str(versions))))
    finished = rebasing.resume(versions)
    if finished:
        click.echo("Finished the renames of an interrupted `db rebase`: "
                   f"{', '.join(f'{old} -> {new}' for old, new in finished)}.")
    plan = rebasing.plan(versions, keep=keep, onto=onto)
    if plan is None:
        click.echo(f"Nothing to rebase: the migrations in {_relative(str(versions))} form one "
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
        _note(f"Note: the database could not be read ({exc}); if it applied any of these "
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
    import tempfile

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
        _confirm(f"Downgrade the database to {fork} now, with the scripts under their old ids?",
                 _refusal("downgrade the database"))
    with tempfile.TemporaryDirectory(prefix="orchestrator-rebase-") as folder:
        scripts = rebasing.old_line_scripts(plan, applied, Path(manager.script.dir),
                                            Path(folder) / "scripts")
        with manager.with_scripts(scripts) as old:
            old.backup_progress = _progress(ctx, "Backing up first")
            undone = old.downgrade(fork)
    click.echo(f"Undid {', '.join(undone)}: the database is at {fork}.")


@db.command()
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
    manager = _manager(ctx)
    started = time.perf_counter()
    info = manager.backup(output, progress=_progress(ctx, "Backing up"))
    click.echo(
        f"Backed up {manager.masked_url} at revision {info.revision or 'base'} to {info.path} "
        f"({_size(info.size)} in {time.perf_counter() - started:.2f}s)."
    )


@db.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def backups(ctx: click.Context, as_json: bool) -> None:
    """List this database's backups in BACKUP_DIR, newest first."""
    manager = _manager(ctx)
    found = manager.backups()
    if as_json:
        _echo_json([info.as_dict() for info in found])
        return
    if not found:
        click.echo(f"No backups of {manager.masked_url} in {manager.backup_dir}.")
        return
    for info in found:
        click.echo(
            f"{info.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{'?' if info.reason == 'damaged' else info.revision or 'base':<6}  "
            f"{info.reason:<17} {_size(info.size):>9}  {info.path}"
        )


@db.command()
@common_options
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--other-database", is_flag=True,
              help="Restore a backup whose sidecar names another database.")
@click.pass_context
def restore(ctx: click.Context, file: Path, yes: bool, other_database: bool) -> None:
    """Replace the database with the backup FILE (its current state is backed up first)."""
    from orchestrator.migrations.backup import restorable

    manager = _manager(ctx)
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
        _confirm("Replace the database's content with the backup?", _refusal("restore"))
    report = manager.restore(file, progress=_progress(ctx, "Restoring"),
                             other_database=other_database)
    if report.safety_backup is not None:
        click.echo(f"Saved the state it replaced to {report.safety_backup.path} first.")
    if report.unversioned:
        click.echo("Restored; the database has tables but no migration revision: check its "
                   "schema, then record the revision it matches with `orchestrator db stamp "
                   "<revision>`.")
    else:
        click.echo(f"Restored; the database is at {report.revision or 'base'}.")


@db.command()
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
    from orchestrator.db import mask_url
    from orchestrator.migrations.validate import newest_revision_on_git_ref
    from orchestrator.migrations.validate import validate as run_rules

    if since is not None and since_git is not None:
        raise BadInputError("--since and --since-git: give one of them")
    settings = _settings(ctx)
    # The manager's scripts folder: the one every other command loads.
    script_location = _manager(ctx).script_location
    git_note = None
    if since_git is not None:
        since = newest_revision_on_git_ref(since_git, settings.database_url, script_location)
        if since is None:
            git_note = f"since-git {since_git}: no revision of the chain is on {since_git}; " \
                       "every revision was checked"
    progress = _ValidationProgress()
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
        _echo_json(document)
    else:
        if git_note:
            click.echo(git_note)
        _print_validation(report)
    if not report.ok:
        ctx.exit(ExitCode.CHECK_FAILED)


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision", default="head", callback=_revision_argument,
                shell_complete=_complete_revisions)
@click.option("--from-backup", type=click.Path(dir_okay=True, path_type=Path), metavar="FILE",
              help="Rehearse on a copy restored from this backup, not from the database.")
@click.option("--keep", is_flag=True, help="Keep the copy afterwards (its name is printed).")
@_MAX_BLOCKING
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
    from orchestrator.migrations.rehearse import rehearse as run_rehearsal
    from orchestrator.migrations.rehearse import render_text

    manager = _manager(ctx)
    rehearsal = run_rehearsal(manager, revision, from_backup=from_backup, keep=keep,
                              max_blocking=max_blocking, allow_changed=allow_changed,
                              notify=_note)
    if as_json or output_format == "json":
        _echo_json(rehearsal.as_dict())
    else:
        click.echo(render_text(rehearsal))
    ctx.exit(rehearsal.exit_code)


class _ValidationProgress:
    """`db validate` as it goes, on stderr: a Rich bar of the scratch database's migration
    steps on a terminal, one line per rule otherwise (a CI log)."""

    def __init__(self) -> None:
        self._terminal = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._rule = ""

    def rule_started(self, rule) -> None:
        self._rule = f"{rule.code} {rule.name}"
        if self._bar is not None:
            self._bar.update(self._task, description=self._rule)

    def step(self, done: int, total: int) -> None:
        if not self._terminal:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("migration steps"),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._rule, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def rule_done(self, rule, seconds: float, outcome: str) -> None:
        if not self._terminal:
            click.echo(f"{rule.code} {rule.name}: {outcome} ({seconds:.1f} s)", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@cli.group()
@common_options
def users() -> None:
    """Manage the users who call the API."""


@users.command("create")
@common_options
@click.option("--email", required=True, help="The user's email address (unique).")
@click.option("--name", required=True, help="The user's name.")
@click.option("--admin", is_flag=True, help="Make the user an admin (the first user always is).")
@click.pass_context
def users_create(ctx: click.Context, email: str, name: str, admin: bool) -> None:
    """Create a user and print their first API token (shown only this once)."""
    from sqlalchemy import select

    from orchestrator.accounts import create_user
    from orchestrator.models import User

    if not name.strip() or len(name.strip()) > 200:
        raise BadInputError("--name: give a name of 1 to 200 characters")
    with _user_session(ctx) as session:
        # With no admin yet, nobody could manage users through the API.
        first = session.scalar(select(User.id).where(User.is_admin).limit(1)) is None
        user, token = create_user(session, email, name.strip(), admin=admin or first)
        session.commit()
    role = "an admin" if user.is_admin else "a member"
    click.echo(
        f"Created user {user.id} <{user.email}>, {role}. Their API token, shown only this once:"
    )
    click.echo(token)


@users.command("promote")
@common_options
@click.argument("email")
@click.pass_context
def users_promote(ctx: click.Context, email: str) -> None:
    """Make a user an admin."""
    _set_role(ctx, email, admin=True)


@users.command("demote")
@common_options
@click.argument("email")
@click.pass_context
def users_demote(ctx: click.Context, email: str) -> None:
    """Make an admin a member again (not the last admin)."""
    _set_role(ctx, email, admin=False)


@users.command("token")
@common_options
@click.argument("email")
@click.option("--name", "token_name", default="issued by orchestrator users token",
              show_default=True, help="What the token is for.")
@click.pass_context
def users_token(ctx: click.Context, email: str, token_name: str) -> None:
    """Issue a new API token for an existing user and print it (shown only this once)."""
    from orchestrator.accounts import issue_token, user_by_email

    if not token_name.strip() or len(token_name.strip()) > 200:
        raise BadInputError("--name: give a name of 1 to 200 characters")
    with _user_session(ctx) as session:
        user = user_by_email(session, email)
        row, token = issue_token(session, user.id, token_name.strip())
        session.commit()
    click.echo(f"Issued token {row.id} for user {user.id} <{user.email}>, shown only this once:")
    click.echo(token)


def _set_role(ctx: click.Context, email: str, *, admin: bool) -> None:
    from orchestrator.accounts import set_admin, user_by_email

    with _user_session(ctx) as session:
        user = user_by_email(session, email, lock=True)
        was = user.is_admin
        set_admin(session, user, admin)
        session.commit()
    role = "an admin" if admin else "a member"
    click.echo(f"User {user.id} <{user.email}> {'was already' if was == admin else 'is now'} {role}.")


@contextlib.contextmanager
def _user_session(ctx: click.Context):
    """A session on the command's database, which must be at head; account errors are bad
    input (one line, exit 2)."""
    from sqlalchemy.orm import Session

    from orchestrator.accounts import AccountError
    from orchestrator.db import create_engine

    manager = _manager(ctx)
    _require_head(manager)
    engine = create_engine(manager.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            try:
                yield session
            except AccountError as exc:
                raise BadInputError(str(exc)) from None
    finally:
        engine.dispose()


def _require_head(manager: MigrationManager) -> None:
    """Refuse to touch the data of a database whose schema is not at head."""
    from orchestrator.migrations import NotAtHeadError

    state = manager.require_known_database()
    if not state.up_to_date:
        raise NotAtHeadError(
            f"the database is at {state.current or 'base'}, not at head {state.head}; "
            "run `orchestrator db upgrade` first"
        )


# -- rendering ----------------------------------------------------------------------------


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
            _note(f"{exc} (retry {attempt + 1} of {retries} in {delay:g}s)")
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
            # Taken before the first step ran (the manager sets it before migrating).
            _print_backup_taken(self.manager, self.say)
        self.seconds += seconds
        if self.each_step:
            self.say(f"  {revision}  {seconds:6.2f}s  {_title(self.manager, revision)}")


def _print_backup_taken(manager: MigrationManager, say=click.echo) -> None:
    if manager.last_backup is not None:
        say(
            f"Backed up first, at {manager.last_backup.revision or 'base'}: "
            f"{manager.last_backup.path}"
        )


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover - the loop always returns


def _progress(ctx: click.Context, description: str):
    """A progress callback: a Rich bar on a terminal for copies that last, nothing otherwise."""
    bar = _ProgressBar(description)
    ctx.call_on_close(bar.close)
    return bar


class _ProgressBar:
    """Shows a bar on stderr once an operation has lasted `delay` seconds, if it is a terminal."""

    def __init__(self, description: str, delay: float = 0.5) -> None:
        self.description = description
        self.delay = delay
        self.started = time.monotonic()
        self._bar = None
        self._task = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            if not sys.stderr.isatty() or time.monotonic() - self.started < self.delay:
                return
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _print_validation(report) -> None:
    import os

    from orchestrator.migrations.validate import RULES

    names = {rule.code: rule.name for rule in RULES}
    for finding in report.findings:
        location = finding.location
        if finding.file is not None:
            relative = os.path.relpath(finding.file)
            location = location.replace(finding.file, relative if not relative.startswith("..")
                                        else finding.file)
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


def _title(manager: MigrationManager, revision: str) -> str:
    return _first_line(manager.script.get_revision(revision).doc)


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _relative(path: str) -> str:
    """`path` relative to the working directory when it is below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _describe_current(status: MigrationStatus) -> str:
    if not status.database_exists:
        return "none (the database does not exist yet)"
    if status.current is None:
        return "none (not under version control)" if status.unversioned else "none (empty database)"
    suffix = " (head)" if status.up_to_date else " (unknown to this code)" if status.ahead else ""
    return f"{status.current}{suffix}"


def _print_status(
    manager: MigrationManager, status: MigrationStatus, as_json: bool, changed: list | None = None
) -> None:
    if as_json:
        document = {"database": manager.masked_url, **status.as_dict()}
        document["changed_scripts"] = [c.as_dict() for c in changed or ()]
        _echo_json(document)
        return
    click.echo(f"database: {manager.masked_url}")
    click.echo(f"current:  {_describe_current(status)}")
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


# -- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; the one place that turns errors into a message and an exit code."""
    _complete_if_asked()
    ctx_meta: dict[str, Any] = {}
    try:
        with cli.make_context("orchestrator", list(sys.argv[1:] if argv is None else argv)) as ctx:
            ctx_meta = ctx.meta
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        _exit(exc.exit_code)
    except BrokenPipeError:
        # The reader went away (`orchestrator db history | head -1`): nothing left to say, and
        # an exit code of its own (as a shell gives a command a closed pipe ended), not 1,
        # which `db check` uses for pending migrations.
        sys.stdout = None  # type: ignore[assignment]  # no flush at exit into a closed pipe
        sys.exit(ExitCode.CLOSED_PIPE)
    except (Exception, KeyboardInterrupt) as exc:
        message, code, traceback_helps = _outcome(exc)
        if traceback_helps and ctx_meta.get("orchestrator.verbose"):
            traceback.print_exc()
        click.echo(message, err=True)
        sys.exit(code)
    _exit(ExitCode.OK)


def _outcome(exc: BaseException) -> tuple[str, int, bool]:
    """What the user is told about `exc`, the exit code, and whether --verbose adds the
    traceback (not for usage errors and declined questions: nothing ran that it would show)."""
    if isinstance(exc, OrchestratorError):
        return f"Error: {exc}", exc.exit_code, True
    if isinstance(exc, click.Abort):
        # A question answered no (or Ctrl-C / end of input at it): nothing was done yet.
        return "Error: not confirmed; nothing was changed", ExitCode.DECLINED, False
    if isinstance(exc, click.UsageError):
        # One line, as every other error: what is wrong, and where the usage is.
        reason = " ".join(exc.format_message().split()).rstrip(".")
        where = exc.ctx.command_path if exc.ctx is not None else "orchestrator"
        return f"Error: {reason}; see `{where} --help`", ExitCode.ERROR, False
    if isinstance(exc, click.ClickException):
        return f"Error: {exc.format_message()}", exc.exit_code, False
    if isinstance(exc, KeyboardInterrupt):
        # Migrations and restores are transactional and the lock dies with its holder.
        return "Interrupted.", ExitCode.INTERRUPTED, True
    if isinstance(exc, OSError):
        # A file the command needed: a read-only folder, a missing mount, a full disk.
        return _file_error(exc), ExitCode.ERROR, True
    refusal = _storage_refusal(exc)
    if refusal is not None:
        return (f"Error: the database refused: {refusal}; check that it is writable and has "
                "room (file permissions, a read-only mount, a full disk)",
                ExitCode.UNREACHABLE, True)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"Error: unexpected {type(exc).__name__}: {reason} (run again with --verbose "
            "for the traceback)", ExitCode.UNEXPECTED, True)


def _exit(code: int) -> NoReturn:
    """Exit with `code`, the output flushed first: a reader that left before the last of it
    is a closed pipe, said by its exit code rather than by Python's warning at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = None  # type: ignore[assignment]
        code = code or ExitCode.CLOSED_PIPE
    except OSError as exc:  # the output's file: a full disk
        sys.stdout = None  # type: ignore[assignment]
        click.echo(_file_error(exc), err=True)
        code = ExitCode.ERROR
    sys.exit(code)


def _file_error(exc: OSError) -> str:
    """What to say of a file the command needed, or its output: a read-only folder, a missing
    mount, a full disk."""
    what = f"cannot use {exc.filename}: " if exc.filename else "cannot write: "
    return (f"Error: {what}{exc.strerror or exc}; check the path, its permissions and free "
            "space")


def _complete_if_asked() -> None:
    """Answer the shell's completion request, when this run is one (Click's protocol: what
    `cli.main()` would do, which `main()` does not call)."""
    instruction = os.environ.get(COMPLETE_VAR)
    if not instruction:
        return
    from click.shell_completion import shell_complete

    sys.exit(shell_complete(cli, {}, "orchestrator", COMPLETE_VAR, instruction))


def _storage_refusal(exc: BaseException) -> str | None:
    """The reason, when `exc` is SQLite refusing to write (or open) its file: the machine's
    doing, not a bug here; None for anything else (a bug stays an unexpected error)."""
    if not hasattr(exc, "orig"):  # not a database error: never load the migration system to ask
        return None
    from orchestrator.migrations.errors import Fault, classify, first_line

    return first_line(exc) if classify(exc) is Fault.STORAGE else None


if __name__ == "__main__":  # pragma: no cover
    main()
