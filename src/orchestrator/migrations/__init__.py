"""The migration system: importable without the web layer.

`MigrationManager` is the public entry point; errors carry the command that fixes them.
"""

from orchestrator.migrations.errors import (
    ConfirmationRequired,
    DatabaseAheadError,
    DatabaseLockTimeout,
    DatabaseUnreachableError,
    EmptyMigrationError,
    MigrationError,
    MigrationFailedError,
    MigrationLockTimeout,
    MultipleHeadsError,
    NotAtHeadError,
    UnknownRevisionError,
    UnversionedDatabaseError,
)
from orchestrator.migrations.manager import MigrationManager, MigrationStatus, RevisionInfo

__all__ = [
    "ConfirmationRequired",
    "DatabaseAheadError",
    "DatabaseLockTimeout",
    "DatabaseUnreachableError",
    "EmptyMigrationError",
    "MigrationError",
    "MigrationFailedError",
    "MigrationLockTimeout",
    "MigrationManager",
    "MigrationStatus",
    "MultipleHeadsError",
    "NotAtHeadError",
    "RevisionInfo",
    "UnknownRevisionError",
    "UnversionedDatabaseError",
]
