"""The migration system's errors. Each message says what is wrong and the command that fixes it.

The CLI catches `MigrationError` once, prints its message on one line, and exits with the
class's `exit_code` (1 is reserved for `db check`'s "migrations are pending").
"""

from __future__ import annotations


class MigrationError(Exception):
    """Base class for every error the migration system reports to a user."""

    exit_code = 2


class IrreversibleMigrationError(MigrationError):
    """A downgrade would cross a revision that declares itself irreversible."""


class UnknownRevisionError(MigrationError):
    """A revision asked for on the command line does not exist in the scripts."""


class DatabaseAheadError(MigrationError):
    """The database is at a revision the code does not know (newer code migrated it)."""


class DatabaseUnreachableError(MigrationError):
    """The database cannot be connected to."""

    exit_code = 3


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
    """A migration script raised; the message names the revision."""

    def __init__(self, message: str, revision: str | None = None) -> None:
        super().__init__(message)
        self.revision = revision


class MigrationLockTimeout(MigrationError):
    """Another migrator held the lock for longer than we were willing to wait."""

    exit_code = 4


class MigrationLockLost(MigrationError):
    """The migration lock was lost while migrating (its session ended, its lock file was
    removed): the migrator stopped, committing nothing more."""

    exit_code = 4


class TransientDatabaseError(MigrationError):
    """A conflict that running again resolves (a deadlock, a serialization failure, a lock
    timeout): nothing is wrong with the script."""

    exit_code = 5


class DatabaseLockTimeout(TransientDatabaseError):
    """A migration waited too long for a table lock held by application traffic."""
