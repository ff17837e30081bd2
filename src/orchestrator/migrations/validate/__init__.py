"""The migration validator: rules that catch broken or dangerous migrations before production.

Each rule is a small function with a docstring saying why it exists (`rules.py`, registered in
`RULES`); it returns findings (a rule code, the file and line where possible, what is wrong and
how to fix it) or raises `Skip` when it cannot run here. Rules that read the scripts work
anywhere (`scripts.py`, `chain.py`, `dangerous.py`). Rules that need a database use the live one
(drift, checksums) or a scratch one of the same kind (models, round trip: `roundtrip.py`): a
temporary SQLite file, or a temporary PostgreSQL database created beside the live one and
dropped after (`orchestrator.migrations.scratch`). Schemas are compared as snapshots
(`schema.py`).

`validate()` (`runner.py`) runs them against any scripts folder (`script_location`), so that
the tests can feed it broken migration sets.
"""

from orchestrator.migrations.errors import GitRefError, IrreversibleMigrationError, MigrationError
from orchestrator.migrations.validate.context import Context
from orchestrator.migrations.validate.git import newest_revision_on_git_ref
from orchestrator.migrations.validate.report import (
    ERROR,
    WARNING,
    Finding,
    Progress,
    Rule,
    Since,
    Skip,
    Skipped,
    ValidationReport,
)
from orchestrator.migrations.validate.roundtrip import describe_diff
from orchestrator.migrations.validate.rules import RULES
from orchestrator.migrations.validate.runner import validate
from orchestrator.migrations.validate.schema import SchemaReader, diff_schemas, schema_snapshot
from orchestrator.migrations.validate.scripts import ScriptFile, read_scripts

__all__ = [
    "ERROR", "RULES", "WARNING", "Context", "Finding", "GitRefError", "IrreversibleMigrationError",
    "MigrationError", "Progress", "Rule", "SchemaReader", "ScriptFile", "Since", "Skip", "Skipped",
    "ValidationReport", "describe_diff", "diff_schemas", "newest_revision_on_git_ref",
    "read_scripts", "schema_snapshot", "validate",
]
