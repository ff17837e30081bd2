"""The root of Orchestrator's error family and its exit codes: the one module everything may import.

The family itself (every error of the migration system, re-exporting these) is in
`orchestrator.migrations.errors`. The root, the exit codes, `SettingsError` and the CLI's
`BadInputError` live here because `settings` and the CLI's start-up sit below the migration
package: importing `orchestrator.migrations.errors` runs the package's `__init__` (the manager,
SQLAlchemy, and the settings themselves) — for `settings` a cycle and a lower layer reaching up,
for the CLI the start-up cost it avoids. This module imports nothing.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What `orchestrator` exits with; the one list of them (docs/migrations.md shows it to users)."""

    OK = 0
    # The answer is no: `db check` found migrations pending, `db validate` or a rehearsal found
    # problems, or a question was answered no (nothing was changed).
    CHECK_FAILED = 1
    DECLINED = 1
    # Bad input, a usage error, a setting, or any error without a code of its own.
    ERROR = 2
    # The database cannot be reached, or its storage refuses to be written.
    UNREACHABLE = 3
    # The migration lock was not got in time, or was lost.
    LOCKED = 4
    # A conflict that running again resolves (a deadlock, a serialization failure, a lock wait).
    TRANSIENT = 5
    UNEXPECTED = 70  # a bug here (sysexits' EX_SOFTWARE): the message asks for --verbose
    INTERRUPTED = 130  # what a shell reports for Ctrl-C
    CLOSED_PIPE = 141  # what a shell reports for a command ended by a closed pipe (SIGPIPE)


class OrchestratorError(Exception):
    """Base of every error reported to a user as one line; `exit_code` is what the CLI exits with."""

    exit_code: ExitCode = ExitCode.ERROR


class SettingsError(OrchestratorError):
    """A setting is missing or malformed; the message names the variable."""


class BadInputError(OrchestratorError):
    """Input a CLI command cannot use: one `Error:` line, exit 2 like any usage error."""
