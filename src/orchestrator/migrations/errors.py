"""The errors of the migration system and the CLI, one family. Each message says what is wrong
and the command that fixes it.

Every class descends from `OrchestratorError` and carries its `ExitCode` (both defined, with
`SettingsError`, in `orchestrator.errors`, below the settings; re-exported here). The CLI catches
the root once, prints the message on one line, and exits with the class's `exit_code` (1 is
reserved for "the answer is no", such as `db check`'s "migrations are pending").

`classify` tells what kind of failure a database driver's exception is, by psycopg's SQLSTATE or
SQLite's result code, for the whole project (the manager, the CLI and the API ask it).
"""

from __future__ import annotations

import enum
import sqlite3
import sys

from orchestrator.errors import ExitCode, OrchestratorError
# Re-exported, so the whole family reads from here: the errors of the layers beside the
# migration system (defined below it, see orchestrator.errors).
from orchestrator.errors import BadInputError as BadInputError
from orchestrator.errors import SettingsError as SettingsError


class MigrationError(OrchestratorError):
    """Base class for every error the migration system reports to a user."""

    exit_code = ExitCode.ERROR


class IrreversibleMigrationError(MigrationError):
    """A downgrade would cross a revision that declares itself irreversible."""


class UnknownRevisionError(MigrationError):
    """A revision asked for on the command line does not exist in the scripts."""


class PastTargetError(UnknownRevisionError):
    """The database is already past the target, in the direction asked for (an upgrade to an
    older revision, a downgrade to a newer one)."""

    exit_code = ExitCode.ERROR


class DatabaseAheadError(MigrationError):
    """The database is at a revision the code does not know (newer code migrated it)."""

    @staticmethod
    def describe(current: str | None) -> str:
        """The message's start, the same wherever a database ahead of the code is refused."""
        return f"the database is at revision {current}, which this code does not know"


class DatabaseUnreachableError(MigrationError):
    """The database cannot be connected to."""

    exit_code = ExitCode.UNREACHABLE


class ConnectionLostError(DatabaseUnreachableError):
    """The database ended the migration's connection midway (a restart, a terminated session,
    a network cut); the message names the revision and what of it may be left."""

    def __init__(self, message: str, revision: str | None = None) -> None:
        super().__init__(message)
        self.revision = revision


class MultipleHeadsError(MigrationError):
    """The scripts have more than one head; they must be merged first."""


class ForkedChainError(MultipleHeadsError):
    """Branches each added migrations from the same revision: duplicate ids, two heads, or a
    `down_revision` that is not the script before it in number order (`db rebase` fixes it)."""


class UnversionedDatabaseError(MigrationError):
    """The database has tables but no revision: it was not created by these migrations."""


class BrokenScriptError(MigrationError):
    """A migration script cannot be loaded (a syntax error, an exception on import): the
    message names the file and the line."""


class NotAtHeadError(MigrationError):
    """An operation that needs an up-to-date database found pending migrations."""


class EmptyMigrationError(MigrationError):
    """Autogenerate found no difference between the models and the database."""


class ConfirmationRequired(MigrationError):
    """A destructive operation needs confirmation that cannot be asked for."""


class MigrationFailedError(MigrationError):
    """A migration script raised; the message names the revision. `failure`: the message's
    first part, what failed and why, without where that left the database."""

    def __init__(self, message: str, revision: str | None = None,
                 failure: str | None = None) -> None:
        super().__init__(message)
        self.revision = revision
        self.failure = failure or message


class MigrationLockTimeout(MigrationError):
    """Another migrator held the lock for longer than we were willing to wait."""

    exit_code = ExitCode.LOCKED


class MigrationLockLost(MigrationError):
    """The migration lock was lost while migrating (its session ended, its lock file was
    removed): the migrator stopped, committing nothing more."""

    exit_code = ExitCode.LOCKED


class TransientDatabaseError(MigrationError):
    """A conflict that running again resolves (a deadlock, a serialization failure, a lock
    timeout): nothing is wrong with the script."""

    exit_code = ExitCode.TRANSIENT


class DatabaseLockTimeout(TransientDatabaseError):
    """A migration waited too long for a table lock held by application traffic."""


class ScriptsChangedError(MigrationError):
    """Applied scripts were edited after they ran; upgrading on top of them is refused."""


class BackupError(MigrationError):
    """A backup or restore could not be made; the message says why and what to do."""


class BackupToolMissing(BackupError):
    """pg_dump or pg_restore is not installed."""


class NotABackupError(BackupError):
    """A file given to restore is not a backup of this kind of database."""


class OtherDatabaseError(BackupError):
    """A backup of another database was given to restore, without `--other-database`."""


class GitRefError(MigrationError):
    """`--since-git` names a ref git cannot resolve, or the scripts are not in a git checkout."""


class RehearsalCopyError(MigrationError):
    """The copy to rehearse on cannot be made."""

    exit_code = ExitCode.UNREACHABLE


class RebaseError(MigrationError):
    """`db rebase` cannot tell which line stays, or cannot move the other."""


# -- driver errors, by type ---------------------------------------------------------------


class Fault(enum.Enum):
    """What kind of failure a database driver reported (see `classify`)."""

    CONFLICT = "conflict"  # a constraint another transaction's change broke
    TRANSIENT = "transient"  # a deadlock, a serialization failure, a busy or locked SQLite file
    LOCK_TIMEOUT = "lock timeout"  # lock_timeout ran out waiting for a lock
    CANCELED = "canceled"  # statement_timeout (or a cancel request) ended the statement
    ENDED = "ended"  # the server ended the session midway: a shutdown, a terminated backend
    UNAVAILABLE = "unavailable"  # cannot connect: no server, refused login, no such database
    MISSING_SCHEMA = "missing schema"  # a table, column, function or schema is not there
    STORAGE = "storage"  # SQLite cannot write or open its file: read-only, full, I/O error
    DAMAGED = "damaged"  # SQLite's file is not a database, or is corrupt
    PRIVILEGE = "privilege"  # the role lacks a privilege (CREATEDB, a table's owner)


# PostgreSQL SQLSTATEs: https://www.postgresql.org/docs/current/errcodes-appendix.html
_SQLSTATES = {
    "40001": Fault.TRANSIENT,  # serialization_failure
    "40P01": Fault.TRANSIENT,  # deadlock_detected
    "55P03": Fault.LOCK_TIMEOUT,  # lock_not_available
    "57014": Fault.CANCELED,  # query_canceled
    "57P01": Fault.ENDED,  # admin_shutdown (pg_terminate_backend, a fast shutdown)
    "57P02": Fault.ENDED,  # crash_shutdown
    "57P03": Fault.ENDED,  # cannot_connect_now
    "42P01": Fault.MISSING_SCHEMA,  # undefined_table
    "42703": Fault.MISSING_SCHEMA,  # undefined_column
    "42704": Fault.MISSING_SCHEMA,  # undefined_object
    "42883": Fault.MISSING_SCHEMA,  # undefined_function
    "3F000": Fault.MISSING_SCHEMA,  # invalid_schema_name
    "42501": Fault.PRIVILEGE,  # insufficient_privilege
}
# Whole classes: 23 integrity constraint violation, 08 connection exception, 53 insufficient
# resources (too many connections), 57P operator intervention, 28 authorization, 3D no database.
_SQLSTATE_CLASSES = (("23", Fault.CONFLICT), ("08", Fault.ENDED), ("53", Fault.UNAVAILABLE),
                     ("57P", Fault.UNAVAILABLE), ("28", Fault.UNAVAILABLE),
                     ("3D", Fault.UNAVAILABLE))
# SQLite's primary result codes (an extended one, such as SQLITE_BUSY_SNAPSHOT, counts as its
# primary): https://www.sqlite.org/rescode.html
_SQLITE_CODES = {
    "SQLITE_CONSTRAINT": Fault.CONFLICT,
    "SQLITE_BUSY": Fault.TRANSIENT,
    "SQLITE_LOCKED": Fault.TRANSIENT,
    "SQLITE_READONLY": Fault.STORAGE,
    "SQLITE_FULL": Fault.STORAGE,
    "SQLITE_IOERR": Fault.STORAGE,
    "SQLITE_CANTOPEN": Fault.STORAGE,
    "SQLITE_PERM": Fault.STORAGE,
    "SQLITE_CORRUPT": Fault.DAMAGED,
    "SQLITE_NOTADB": Fault.DAMAGED,
    "SQLITE_SCHEMA": Fault.UNAVAILABLE,  # the schema changed under a prepared statement
}
# SQLite has one code (SQLITE_ERROR) for both a bad statement and a missing table or column;
# only its message tells them apart.
_SQLITE_MISSING = ("no such table", "no such column", "has no column named")
# An sqlite3 error built without a result code (by hand, not raised by SQLite) is known by
# SQLite's fixed wording of the code (sqlite3_errstr), matched whole.
_SQLITE_ERRSTR = {
    "database is locked": "SQLITE_BUSY",
    "database table is locked": "SQLITE_LOCKED",
    "attempt to write a readonly database": "SQLITE_READONLY",
    "database or disk is full": "SQLITE_FULL",
    "disk I/O error": "SQLITE_IOERR",
    "unable to open database file": "SQLITE_CANTOPEN",
    "database disk image is malformed": "SQLITE_CORRUPT",
    "file is not a database": "SQLITE_NOTADB",
}


def classify(exc: BaseException) -> Fault | None:
    """What kind of database failure `exc` is (a SQLAlchemy `DBAPIError` or the driver's own
    error), by psycopg's SQLSTATE or SQLite's result code; None for anything else (a bug, a
    failing script, an error without a code)."""
    if getattr(exc, "connection_invalidated", False):
        return Fault.ENDED
    original = getattr(exc, "orig", None) or exc
    state = getattr(original, "sqlstate", None)
    if state:
        return _SQLSTATES.get(state) or next(
            (fault for prefix, fault in _SQLSTATE_CLASSES if state.startswith(prefix)), None)
    if isinstance(original, sqlite3.Error):
        name = getattr(original, "sqlite_errorname", None) or _SQLITE_ERRSTR.get(first_line(original), "")
        primary = "_".join(name.split("_")[:2])
        if primary == "SQLITE_ERROR":
            message = str(original)
            return Fault.MISSING_SCHEMA if any(t in message for t in _SQLITE_MISSING) else None
        return _SQLITE_CODES.get(primary)
    psycopg = sys.modules.get("psycopg")  # not loaded: the error cannot be one of its own
    if psycopg is not None and isinstance(original, psycopg.OperationalError):
        # psycopg gives no SQLSTATE when it cannot connect (no server, a refused login, no
        # such database) or the connection broke outside a statement.
        return Fault.UNAVAILABLE
    return None


def first_line(exc: BaseException) -> str:
    """The first line of the driver's message (the DBAPI's own error when SQLAlchemy wraps
    one), or "" when there is none: what a one-line error quotes."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else ""


def one_line(exc: BaseException) -> str:
    """The driver's error as `Type: first line` (the DBAPI's own error when SQLAlchemy wraps
    one)."""
    original = getattr(exc, "orig", None) or exc
    return f"{type(original).__name__}: {first_line(original) or 'no message'}"
