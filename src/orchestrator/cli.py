"""The `orchestrator` command.

Imports stay cheap: `orchestrator db ...` never imports FastAPI or uvicorn (only `serve` does),
and heavy modules are imported inside the command that needs them. Errors are printed once, as
one line, by `main()`; `--verbose` adds the traceback.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from orchestrator.migrations import MigrationManager, MigrationStatus
    from orchestrator.settings import Settings

ENVIRONMENTS = ("development", "staging", "production")
CHECK_PENDING_EXIT = 1
UNEXPECTED_ERROR_EXIT = 70
INTERRUPTED_EXIT = 130  # what a shell reports for Ctrl-C


class _BadInput(click.ClickException):
    """Input the command cannot use: one `Error:` line, exit 2 like any usage error."""

    exit_code = 2


# -- options shared by `orchestrator` and every `db` command ------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
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
    manager = MigrationManager.from_settings(settings, notify=_note, **kwargs)
    manager.progress = lambda revision, seconds: click.echo(
        f"  {revision}  {seconds:6.2f}s  {_title(manager, revision)}"
    )
    ctx.call_on_close(manager.close)
    return manager


def _note(message: str) -> None:
    click.echo(message, err=True)


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
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the API (development migrates its database first)."""
    import logging

    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.migrations.startup import prepare_database

    logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(name)s: %(message)s")
    # Alembic announces each of its autogenerate plugins at INFO; only noise for a server.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    settings = _settings(ctx)
    # Apply the start-up policy before uvicorn starts, so that a database that must stop
    # start-up gives the usual one-line error instead of a lifespan traceback.
    with _manager(ctx) as manager:
        prepare_database(settings, manager)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@cli.group()
@common_options
def db() -> None:
    """Inspect and migrate the database schema."""


@db.command()
@common_options
@click.pass_context
def current(ctx: click.Context) -> None:
    """Print the database's revision."""
    status = _manager(ctx).status()
    click.echo(_describe_current(status))


@db.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show current, head and pending revisions, and applied scripts edited since."""
    manager = _manager(ctx)
    _print_status(manager, manager.status(), as_json, changed=manager.changed_scripts())


@db.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Exit 0 when the database is at head, 1 when migrations are pending, 2+ on errors."""
    manager = _manager(ctx)
    state = manager.status()
    _print_status(manager, state, as_json)
    manager.require_known_database(state)
    if not state.up_to_date:
        ctx.exit(CHECK_PENDING_EXIT)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """FloatRange lets nan through (it compares false with any bound)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


# REVISION may be relative ("-1", "+2"): it must not be parsed as an option.
_REVISION_ARGS = {"ignore_unknown_options": True}


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision", default="head")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (REV may be START:END).")
@click.option("--lock-timeout", type=click.FloatRange(min=0), callback=_finite,
              help="Seconds to wait for another migrator.")
@click.option("--retries", type=click.IntRange(min=0), default=0, help="Retries after a table-lock timeout.")
@click.option(
    "--allow-changed",
    is_flag=True,
    help="Upgrade even though applied scripts were edited since (staging, production).",
)
@click.pass_context
def upgrade(
    ctx: click.Context,
    revision: str,
    sql: bool,
    lock_timeout: float | None,
    retries: int,
    allow_changed: bool,
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    import functools

    manager = _manager(ctx, lock_timeout=lock_timeout)
    if sql:
        start, _, end = revision.rpartition(":")
        click.echo(manager.sql(end or "head", start=start or None), nl=False)
        return
    plan = manager.plan_upgrade(revision)
    if not plan:
        click.echo(f"Already at {manager.get_current_revision() or 'base'}: nothing to apply.")
        return
    click.echo(f"Upgrading {manager.masked_url}: {', '.join(plan)}")
    manager.backup_progress = _progress(ctx, "Backing up first")
    _migrate(functools.partial(manager.upgrade, allow_changed=allow_changed), revision, retries,
             "Applied")
    _print_backup_taken(manager)


@db.command(context_settings=_REVISION_ARGS)
@common_options
@click.argument("revision")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), callback=_finite,
              help="Seconds to wait for another migrator.")
@click.option("--retries", type=click.IntRange(min=0), default=0, help="Retries after a table-lock timeout.")
@click.pass_context
def downgrade(
    ctx: click.Context,
    revision: str,
    yes: bool,
    sql: bool,
    lock_timeout: float | None,
    retries: int,
) -> None:
    """Undo migrations down to REVISION (an id, -1, or base; with --sql also START:END)."""
    from orchestrator.migrations import ConfirmationRequired

    manager = _manager(ctx, lock_timeout=lock_timeout)
    if sql:
        start, _, end = revision.rpartition(":")
        start = start or manager.get_current_revision() or "head"
        click.echo(manager.sql(end, start=start), nl=False)
        return
    plan = manager.plan_downgrade(revision)
    if not plan:
        click.echo(f"Already at {manager.get_current_revision() or 'base'}: nothing to undo.")
        return
    click.echo(f"Downgrading {manager.masked_url}; this undoes:")
    for rev in plan:
        click.echo(f"  {rev}  {_title(manager, rev)}")
    if _settings(ctx).environment.value == "production" and not yes:
        if not sys.stdin.isatty():
            raise ConfirmationRequired(
                "refusing to downgrade production without confirmation; "
                "run it on a terminal or pass --yes"
            )
        click.confirm("Downgrade the production database?", abort=True)
    manager.backup_progress = _progress(ctx, "Backing up first")
    _migrate(manager.downgrade, revision, retries, "Undid")
    _print_backup_taken(manager)


@db.command()
@common_options
@click.option("--log", "full_log", is_flag=True, help="Also list every recorded step.")
@click.pass_context
def history(ctx: click.Context, full_log: bool) -> None:
    """List every migration, oldest first, with what the database last recorded doing with it."""
    manager = _manager(ctx)
    edited = {changed.revision for changed in manager.changed_scripts()}
    applied = manager.applied_history()
    last = {entry.revision: entry for entry in applied}
    scripts = manager.history()
    current = manager.get_current_revision()
    ahead = current is not None and current not in {info.revision for info in scripts}
    if ahead:
        click.echo(f"The database is at {current}, which these scripts do not know: whether each "
                   "script below was applied cannot be told from its revision.")
    for info in scripts:
        marks = ["?" if ahead else "applied" if info.applied else "pending"]
        if info.is_head:
            marks.append("head")
        if info.revision in edited:
            marks.append("EDITED since applied")
        title = info.message.splitlines()[0] if info.message else ""
        line = f"{info.revision}  [{', '.join(marks)}]  {title}"
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
@click.argument("revision")
@click.pass_context
def stamp(ctx: click.Context, revision: str) -> None:
    """Record REVISION as the database's revision without running migrations."""
    manager = _manager(ctx)
    manager.stamp(revision)
    click.echo(f"Stamped {manager.masked_url} at {manager.get_current_revision() or 'base'}.")


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
        import json

        click.echo(json.dumps([info.as_dict() for info in found], indent=2))
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
    from orchestrator.migrations import ConfirmationRequired
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
        if not sys.stdin.isatty():
            raise ConfirmationRequired(
                "refusing to restore without confirmation; run it on a terminal or pass --yes"
            )
        click.confirm("Replace the database's content with the backup?", abort=True)
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
@click.pass_context
def validate(ctx: click.Context, strict: bool, output_format: str) -> None:
    """Check the migrations; exits 1 when a rule finds an error."""
    from orchestrator.db import mask_url
    from orchestrator.migrations.validate import validate as run_rules

    settings = _settings(ctx)
    report = run_rules(settings.database_url, strict=strict)
    if output_format == "json":
        import json

        click.echo(json.dumps({"database": mask_url(settings.database_url), **report.as_dict()},
                              indent=2))
    else:
        _print_validation(report)
    if not report.ok:
        ctx.exit(1)


@cli.group()
@common_options
def users() -> None:
    """Manage the users who call the API."""


@users.command("create")
@common_options
@click.option("--email", required=True, help="The user's email address (unique).")
@click.option("--name", required=True, help="The user's name.")
@click.pass_context
def users_create(ctx: click.Context, email: str, name: str) -> None:
    """Create a user and print their first API token (shown only this once)."""
    from sqlalchemy.orm import Session

    from orchestrator.accounts import AccountError, create_user
    from orchestrator.db import create_engine

    manager = _manager(ctx)
    _require_head(manager)
    if not name.strip() or len(name.strip()) > 200:
        raise _BadInput("--name: give a name of 1 to 200 characters")
    engine = create_engine(manager.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            try:
                user, token = create_user(session, email, name.strip())
            except AccountError as exc:
                raise _BadInput(str(exc)) from None
            session.commit()
    finally:
        engine.dispose()
    click.echo(f"Created user {user.id} <{user.email}>. Their API token, shown only this once:")
    click.echo(token)


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


def _migrate(action, revision: str, retries: int, verb: str) -> None:
    from orchestrator.migrations import DatabaseLockTimeout

    for attempt in range(retries + 1):
        started = time.perf_counter()
        try:
            done = action(revision)
        except DatabaseLockTimeout as exc:
            if attempt == retries:
                raise
            # Back off, so the transaction in the way has a chance to finish.
            delay = min(0.5 * 2**attempt, 10.0)
            _note(f"{exc} (retry {attempt + 1} of {retries} in {delay:g}s)")
            time.sleep(delay)
            continue
        elapsed = time.perf_counter() - started
        if done:
            click.echo(f"{verb} {', '.join(done)} in {elapsed:.2f}s.")
        else:
            # We planned before taking the lock; the migrator that held it did the work.
            click.echo("Nothing to do: another migrator already did it while we waited.")
        return


def _print_backup_taken(manager: MigrationManager) -> None:
    if manager.last_backup is not None:
        click.echo(
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
    doc = manager.script.get_revision(revision).doc or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


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
        import json

        document = {"database": manager.masked_url, **status.as_dict()}
        if changed is not None:
            document["changed_scripts"] = [c.as_dict() for c in changed]
        click.echo(json.dumps(document))
        return
    click.echo(f"database: {manager.masked_url}")
    click.echo(f"current:  {_describe_current(status)}")
    click.echo(f"head:     {status.head or 'none'}")
    if status.interrupted is not None:
        click.echo(f"INTERRUPTED: {status.interrupted.describe()}")
    if status.read_only:
        click.echo(
            "READ-ONLY: new sessions of this database cannot write "
            "(default_transaction_read_only is on); if that is left from a restore that was "
            f"killed, run `{manager.make_writable_statement()}` as its owner"
        )
    if status.ahead:
        click.echo("state:    the database is AHEAD of the code")
    elif status.unversioned:
        click.echo("state:    tables exist but no revision is recorded (see `db stamp`)")
    elif status.up_to_date:
        click.echo("state:    up to date")
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
    from orchestrator.migrations.errors import MigrationError
    from orchestrator.settings import SettingsError

    ctx_meta: dict[str, Any] = {}
    try:
        with cli.make_context("orchestrator", list(sys.argv[1:] if argv is None else argv)) as ctx:
            ctx_meta = ctx.meta
            cli.invoke(ctx)
    except (MigrationError, SettingsError) as exc:
        if ctx_meta.get("orchestrator.verbose"):
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        # Migrations and restores are transactional and the lock dies with its holder.
        if ctx_meta.get("orchestrator.verbose"):
            traceback.print_exc()
        click.echo("Interrupted.", err=True)
        sys.exit(INTERRUPTED_EXIT)
    except BrokenPipeError:
        # The reader went away (`orchestrator db history | head -1`): nothing left to say.
        sys.stdout = None  # type: ignore[assignment]  # no flush at exit into a closed pipe
        sys.exit(1)
    except OSError as exc:
        # A file the command needed: a read-only folder, a missing mount, a full disk.
        if ctx_meta.get("orchestrator.verbose"):
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(
            f"Error: cannot use{where}: {exc.strerror or exc}; check the path, its permissions "
            "and free space",
            err=True,
        )
        sys.exit(2)
    except Exception as exc:
        refusal = _storage_refusal(exc)
        if refusal is not None:
            if ctx_meta.get("orchestrator.verbose"):
                traceback.print_exc()
            click.echo(
                f"Error: the database refused: {refusal}; check that it is writable and has "
                "room (file permissions, a read-only mount, a full disk)",
                err=True,
            )
            sys.exit(3)
        if ctx_meta.get("orchestrator.verbose"):
            traceback.print_exc()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {reason} (run again with --verbose "
            "for the traceback)",
            err=True,
        )
        sys.exit(UNEXPECTED_ERROR_EXIT)
    sys.exit(0)


# What SQLite says when its file cannot be written: the machine's doing, not a bug here.
_STORAGE_REFUSALS = ("readonly database", "disk is full", "disk I/O error",
                     "unable to open database file")


def _storage_refusal(exc: BaseException) -> str | None:
    """The reason, when `exc` is SQLite refusing to write its file; None for anything else
    (a bug stays an unexpected error)."""
    module = sys.modules.get("sqlalchemy.exc")  # never imported just to ask
    if module is None or not isinstance(exc, module.OperationalError):
        return None
    reason = str(exc.orig).strip().splitlines()[0]
    return reason if any(phrase in reason for phrase in _STORAGE_REFUSALS) else None


if __name__ == "__main__":  # pragma: no cover
    main()
