"""What every command shares: the common options, the settings and manager a command runs with,
the REVISION argument (and its completion), the duration type, and the confirmation prompt."""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from orchestrator.cli.render import first_line

if TYPE_CHECKING:
    from orchestrator.migrations import MigrationManager
    from orchestrator.settings import Settings

# Environment's values (orchestrator.settings), spelled out: importing the settings here would
# load pydantic for every command, `--help` and shell completion included.
ENVIRONMENTS = ("development", "staging", "production")


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


def settings_for(ctx: click.Context) -> Settings:
    """The settings the command runs with: the environment's, overridden by --env and
    --database-url."""
    # Imported here: pydantic costs `--help` and each shell completion 0.7 s (package docstring).
    from orchestrator.settings import load_settings

    return load_settings(
        environment=_option(ctx, "environment"), database_url=_option(ctx, "database_url")
    )


def manager_for(ctx: click.Context, **kwargs: Any) -> MigrationManager:
    """The command's migration manager, closed when the command ends."""
    # Imported here: SQLAlchemy and Alembic cost `--help` and each shell completion 1.4 s.
    from orchestrator.migrations import MigrationManager

    settings = settings_for(ctx)
    if kwargs.get("lock_timeout") is None:
        kwargs.pop("lock_timeout", None)

    def waiting(message: str) -> None:
        # The manager speaks only when it has to wait for another migrator's lock.
        ctx.find_root().meta["orchestrator.waited"] = True
        note(message)

    manager = MigrationManager.from_settings(settings, notify=waiting, **kwargs)
    ctx.call_on_close(manager.close)
    return manager


def note(message: str) -> None:
    """Say `message` on stderr: what happens along the way, not the command's output."""
    click.echo(message, err=True)


class Duration(click.ParamType):
    """Seconds, as the settings read them: `30`, `500ms`, `30s` or `5min`."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        # Imported here: pydantic, 0.7 s that `--help` and completion skip.
        from orchestrator.settings import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def revision_argument(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """REVISION takes -1 (so unknown options reach it): anything else that looks like an option
    is one this command does not have."""
    # Imported here: the migration package (SQLAlchemy, Alembic), 1.4 s that `--help` skips.
    from orchestrator.migrations.chain import is_relative

    if value is not None and value.startswith("-") and not is_relative(value.split(":")[0]):
        raise click.NoSuchOption(value, ctx=ctx)
    return value


def complete_revisions(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The scripts' revision ids (with their titles), head and base; no database is read."""
    try:
        # Imported here: Alembic and the migration package, 1.4 s that completing a command's
        # name skips.
        from alembic.script import ScriptDirectory

        from orchestrator.migrations.manager import alembic_config

        scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
        # Nor a warning (two scripts with one id, after a merge): the next command says it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            revisions = list(reversed(list(scripts.walk_revisions())))
    except Exception:  # a completion must never print a traceback into the shell
        return []
    items = [CompletionItem(rev.revision, help=first_line(rev.doc)) for rev in revisions]
    items += [CompletionItem("head", help="the newest revision"),
              CompletionItem("base", help="before the first revision")]
    return [item for item in items if item.value.startswith(incomplete)]


# REVISION may be relative ("-1", "+2"): it must not be parsed as an option.
REVISION_ARGS = {"ignore_unknown_options": True}

LOCK_TIMEOUT = click.option(
    "--lock-timeout", type=Duration(), metavar="DURATION",
    help="How long to wait for another migrator: seconds, or with ms, s or min "
    "(default MIGRATION_LOCK_TIMEOUT).",
)
MAX_BLOCKING = click.option(
    "--max-blocking", type=Duration(), default="1s", show_default=True, metavar="SECONDS",
    help="Longest time a migration may block writes to a table that has rows.")
RETRIES = click.option("--retries", type=click.IntRange(min=0), default=0,
                       help="Retries after a transient failure: a table-lock timeout, a "
                       "deadlock, a lost connection or migration lock.")


def must_ask(manager: MigrationManager, yes: bool) -> bool:
    """Whether a command that takes the database back asks first (production, without --yes)."""
    return manager.environment.asks_before_downgrade and not yes


def refusal(what: str) -> str:
    """What a command that must ask says when there is no terminal to ask on."""
    return f"refusing to {what} without confirmation; run it on a terminal or pass --yes"


def confirm(question: str, refused: str) -> None:
    """Ask on a terminal (a no ends the command, exit 1); without one, refuse with `refused`
    (see `refusal`)."""
    # Imported here: the migration package, 1.4 s that `--help` skips.
    from orchestrator.migrations import ConfirmationRequired

    if not sys.stdin.isatty():
        raise ConfirmationRequired(refused)
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
