"""The `orchestrator` command as a whole: the root group (assembled from `db`, `users` and
`serve`) and `main()`, the one place that turns an error into a message and an exit code."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import click
from click.shell_completion import shell_complete

from orchestrator.cli.db import db
from orchestrator.cli.options import common_options
from orchestrator.cli.serve import serve
from orchestrator.cli.users import users
from orchestrator.errors import ExitCode, OrchestratorError

# Click's shell completion: `_ORCHESTRATOR_COMPLETE=bash_source orchestrator` prints the script.
COMPLETE_VAR = "_ORCHESTRATOR_COMPLETE"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.version_option(package_name="orchestrator")
def cli() -> None:
    """Orchestrator: the API server and its database migrations."""


cli.add_command(serve)
cli.add_command(db)
cli.add_command(users)


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
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        # `orchestrator` or `orchestrator db` alone: Click's message is the whole help page.
        names = ", ".join(exc.ctx.command.list_commands(exc.ctx))  # type: ignore[union-attr]
        where = exc.ctx.command_path  # type: ignore[union-attr]
        return (f"Error: missing a command (one of: {names}); see `{where} --help`",
                ExitCode.ERROR, False)
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
    sys.exit(shell_complete(cli, {}, "orchestrator", COMPLETE_VAR, instruction))


def _storage_refusal(exc: BaseException) -> str | None:
    """The reason, when `exc` is SQLite refusing to write (or open) its file: the machine's
    doing, not a bug here; None for anything else (a bug stays an unexpected error)."""
    if not hasattr(exc, "orig"):  # not a database error: never load the migration system to ask
        return None
    # Imported here: the migration package, 1.4 s that a usage error or `--help` skips.
    from orchestrator.migrations.errors import Fault, classify, first_line

    return first_line(exc) if classify(exc) is Fault.STORAGE else None
