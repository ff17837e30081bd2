"""What the linter knows and reports: its rules (`RULES`, one code each), its findings, and the
findings reviewers accepted in `validate.toml`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

# Beside `versions/`: findings reviewed and accepted in scripts that can no longer be edited
# (they were applied: an edit would change their checksum).
ACCEPTED_FILE = "validate.toml"


@dataclass(frozen=True)
class LintRule:
    code: str
    name: str
    summary: str


RULES = (
    LintRule("MIG009", "renders-offline",
             "the revision renders as PostgreSQL SQL offline, and the SQL parses"),
    LintRule("MIG010", "not-null-column-without-default",
             "ADD COLUMN … NOT NULL without a default on an existing table"),
    LintRule("MIG011", "volatile-default",
             "ADD COLUMN with a volatile default, a serial, an identity or a stored generated "
             "column: a table rewrite"),
    LintRule("MIG012", "set-not-null",
             "SET NOT NULL on an existing column without a validated CHECK (col IS NOT NULL)"),
    LintRule("MIG013", "index-not-concurrent",
             "CREATE INDEX / DROP INDEX / REINDEX without CONCURRENTLY on an existing table"),
    LintRule("MIG014", "concurrently-in-transaction",
             "CONCURRENTLY inside the migration's transaction (outside autocommit_block())"),
    LintRule("MIG015", "unique-constraint",
             "ADD CONSTRAINT … UNIQUE / PRIMARY KEY that builds its index under the lock"),
    LintRule("MIG016", "constraint-not-valid",
             "FOREIGN KEY or CHECK added without NOT VALID, or validated in the same "
             "transaction that locked the table"),
    LintRule("MIG017", "rewriting-type-change",
             "a column type change that rewrites the table (or CLUSTER, VACUUM FULL, SET "
             "LOGGED/UNLOGGED, SET TABLESPACE)"),
    LintRule("MIG018", "drop-in-use",
             "dropping a table or column the running code may still use"),
    LintRule("MIG019", "rename-in-use",
             "renaming a table or column the running code still uses"),
    LintRule("MIG020", "batch-recreate",
             "batch_alter_table(recreate=\"always\") copying a table on PostgreSQL"),
    LintRule("MIG021", "unbatched-dml",
             "one UPDATE or DELETE over a whole existing table (not by key or key range), or a "
             "TRUNCATE"),
    LintRule("MIG022", "row-by-row-loop",
             "a Python loop changing rows one by one inside the migration's transaction"),
)
NAMES = {rule.code: rule.name for rule in RULES}


@dataclass(frozen=True)
class LintFinding:
    code: str
    message: str
    fix: str
    file: str
    line: int | None
    revision: str

    @property
    def name(self) -> str:
        return NAMES[self.code]


@dataclass(frozen=True)
class Accepted:
    """A finding reviewed and accepted in `validate.toml`."""

    revision: str
    code: str
    reason: str


def read_accepted(folder: Path) -> list[Accepted]:
    """The accepted findings of a scripts folder (`[[accept]]` tables: revision, code, reason);
    an entry without a reason accepts nothing."""
    path = folder / ACCEPTED_FILE
    if not path.exists():
        return []
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    return [
        Accepted(str(entry.get("revision", "")), str(entry.get("code", "")),
                 str(entry.get("reason", "")).strip())
        for entry in document.get("accept", [])
        if str(entry.get("reason", "")).strip()
    ]
