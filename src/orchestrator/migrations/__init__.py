"""The migration system: importable without the web layer.

`MigrationManager` is the public entry point; errors carry the command that fixes them.
"""

from orchestrator.migrations.errors import (
    BrokenScriptError,
    ConfirmationRequired,
    DatabaseAheadError,
    DatabaseLockTimeout,
    DatabaseUnreachableError,
    EmptyMigrationError,
    ForkedChainError,
    MigrationError,
    MigrationFailedError,
    MigrationLockTimeout,
    MultipleHeadsError,
    NotAtHeadError,
    UnknownRevisionError,
    UnversionedDatabaseError,
)
from orchestrator.migrations.manager import (
    InterruptedStep,
    MigrationManager,
    MigrationStatus,
    RevisionInfo,
)

__all__ = [
    "BrokenScriptError",
    "ConfirmationRequired",
    "DatabaseAheadError",
    "DatabaseLockTimeout",
    "DatabaseUnreachableError",
    "EmptyMigrationError",
    "ForkedChainError",
    "InterruptedStep",
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
