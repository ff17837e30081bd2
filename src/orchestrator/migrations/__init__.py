"""The migration system: importable without the web layer.

`MigrationManager` is the public entry point; errors carry the command that fixes them.
"""

from orchestrator.migrations.errors import (
    BrokenScriptError,
    ConfirmationRequired,
    ConnectionLostError,
    DatabaseAheadError,
    DatabaseLockTimeout,
    DatabaseUnreachableError,
    EmptyMigrationError,
    ForkedChainError,
    MigrationError,
    MigrationFailedError,
    MigrationLockLost,
    MigrationLockTimeout,
    MultipleHeadsError,
    NotAtHeadError,
    TransientDatabaseError,
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
    "ConnectionLostError",
    "DatabaseAheadError",
    "DatabaseLockTimeout",
    "DatabaseUnreachableError",
    "EmptyMigrationError",
    "ForkedChainError",
    "InterruptedStep",
    "MigrationError",
    "MigrationFailedError",
    "MigrationLockLost",
    "MigrationLockTimeout",
    "MigrationManager",
    "MigrationStatus",
    "MultipleHeadsError",
    "NotAtHeadError",
    "TransientDatabaseError",
    "RevisionInfo",
    "UnknownRevisionError",
    "UnversionedDatabaseError",
]
