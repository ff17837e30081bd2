"""The migration manager: `MigrationManager` and the values its commands return.

The class is built in facade.py from one mixin per job (see its docstring); this face only
hands its public names on, so `from orchestrator.migrations.manager import MigrationManager`
reads the same as before the split.
"""

from orchestrator.migrations.manager.authoring import alembic_config
from orchestrator.migrations.manager.facade import MigrationManager
from orchestrator.migrations.manager.state import InterruptedStep, MigrationStatus, RevisionInfo

__all__ = [
    "InterruptedStep",
    "MigrationManager",
    "MigrationStatus",
    "RevisionInfo",
    "alembic_config",
]
