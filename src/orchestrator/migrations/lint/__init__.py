"""The migration linter: what would take a PostgreSQL table down under live traffic.

Two sources of truth, each for what it shows best:

- the SQL each revision runs on PostgreSQL, rendered offline by Alembic (`render`) and read by
  PostgreSQL's own parser (`sql`, through pglast): which statement, on which table, in which
  transaction, against which schema (`rules`);
- the script's Python (`source`): loops that change rows one by one, and the reviewers'
  `# validate: ignore[CODE] reason` comments.

`lint()` is the whole interface: the validator (`validate.py`) turns its findings into its own,
one rule code each. Importing this package is cheap (the rule list, the findings, reading a
script); `lint()` loads the rest (`revisions`: rendering, the parser, the rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.migrations.lint.findings import (
    ACCEPTED_FILE,
    NAMES,
    RULES,
    Accepted,
    LintFinding,
    LintRule,
    read_accepted,
)
from orchestrator.migrations.lint.source import read_source

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

__all__ = ["ACCEPTED_FILE", "NAMES", "RULES", "Accepted", "LintFinding", "LintRule", "lint",
           "read_accepted", "read_source"]


def lint(script: ScriptDirectory, revisions: Sequence[str], first: int = 0) -> list[LintFinding]:
    """The findings of every revision, oldest first (`revisions` in chain order); with `first`,
    of `revisions[first:]` only (those before are read for what they build, not judged)."""
    # Rendering, pglast and the rules cost ~0.2 s to import (measured with -X importtime): the
    # validator imports this package for its rule list even when it lints nothing.
    from orchestrator.migrations.lint.revisions import lint_revisions

    return lint_revisions(script, revisions, first)
