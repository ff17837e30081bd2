"""The migration linter: what would take a PostgreSQL table down under live traffic.

Two sources of truth, each for what it shows best:

- the SQL each revision runs on PostgreSQL, rendered offline by Alembic (`render`) and read by
  PostgreSQL's own parser (`sql`, through pglast): which statement, on which table, in which
  transaction, against which schema (`rules`);
- the script's Python (`source`): loops that change rows one by one, and the reviewers'
  `# validate: ignore[CODE] reason` comments.

`lint()` is the whole interface: the validator (`validate.py`) turns its findings into its own,
one rule code each. Importing this module is cheap; the parser is loaded by `lint()`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.migrations.lint.source import read_source

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

    from orchestrator.migrations.lint.render import Rendered
    from orchestrator.migrations.lint.rules import Hit
    from orchestrator.migrations.lint.source import Source

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


def lint(script: ScriptDirectory, revisions: Sequence[str]) -> list[LintFinding]:
    """The findings of every revision, oldest first (`revisions` in chain order)."""
    from orchestrator.migrations.lint.render import render
    from orchestrator.migrations.lint.sql import Schema

    rendered = render(script, revisions)
    accepted = read_accepted(Path(script.dir))
    schema = Schema()
    findings: list[LintFinding] = []
    for upgrade, downgrade in zip(rendered[::2], rendered[1::2], strict=True):
        try:
            findings += _lint_revision(upgrade, downgrade, schema, accepted)
        except Exception as exc:  # a linter bug must not hide the revision, nor stop validate
            findings.append(LintFinding(
                "MIG009",
                f"revision {upgrade.revision}: the linter failed on it ({type(exc).__name__}: "
                f"{exc}), so it was not checked",
                "this is a bug in the linter: report it with the script; meanwhile review the "
                "revision's SQL (`orchestrator db upgrade REV --sql`) by hand",
                upgrade.path, None, upgrade.revision))
    return findings


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


def _lint_revision(upgrade: Rendered, downgrade: Rendered, schema, accepted) -> list[LintFinding]:
    from orchestrator.migrations.lint.source import Source

    source = Source.parse(upgrade.path, read_source(Path(upgrade.path)))
    hits, at = _sql_hits(upgrade, schema)
    for table, lines in upgrade.batch_recreates:
        from orchestrator.migrations.lint.rules import batch_hit

        hits.append((batch_hit(table), lines))
    if upgrade.error is not None:
        # The traceback passes through upgrade() in the script, so there is always a line.
        hits.append((_render_failure(upgrade), upgrade.error_lines))
    for loop_line, statement_line in source.row_by_row_loops():
        hits.append((_loop_hit(statement_line), (loop_line,)))
    hits += _downgrade_hits(downgrade, at.new_tables, at.new_columns)
    return _findings(upgrade, source, hits, accepted)


def _sql_hits(rendered: Rendered, schema):
    """Hits of the SQL rules, statement by statement, and where the revision ended."""
    from orchestrator.migrations.lint.rules import At, Hit, advance, check
    from orchestrator.migrations.lint.sql import ParseError, parse

    hits: list[tuple[Hit, tuple[int, ...]]] = []
    at = At(statement=None, schema=schema)
    transaction: int | None = None
    for statement in rendered.statements:
        if statement.transaction is None or statement.transaction != transaction:
            at.locked = set()  # a new transaction, or autocommit: no lock is held any more
        transaction = statement.transaction
        at.statement = statement
        try:
            nodes = parse(statement.sql)
        except ParseError as exc:
            hits.append((Hit("MIG009", f"runs SQL that PostgreSQL cannot parse ({exc}): "
                             f"{_shorten(statement.sql)}",
                             "fix the statement; on PostgreSQL the migration fails here"),
                         statement.lines))
            continue
        for node in nodes:
            hits += [(hit, statement.lines) for hit in check(node, at)]
            advance(node, at)
    # A view under a renamed table's old name keeps the running code working (expand).
    hits = [(hit, lines) for hit, lines in hits
            if not (hit.code == "MIG019" and hit.subject in at.views)]
    return hits, at


def _downgrade_hits(rendered: Rendered, tables: set[str], columns: set[tuple[str, str]]):
    """In downgrade(), dropping what the same revision's upgrade created is the point; dropping
    anything else destroys data an earlier revision owns."""
    from orchestrator.migrations.lint.rules import Hit
    from orchestrator.migrations.lint.sql import AlterTableType, ObjectType, ParseError, ast, \
        names, parse

    hits = []
    undo = "undo only what upgrade() did"
    for statement in rendered.statements:
        try:
            nodes = parse(statement.sql)
        except ParseError:
            continue
        for node in nodes:
            if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
                for table in (names(o)[-1] for o in node.objects):
                    if table not in tables:
                        hits.append((Hit("MIG018", f"downgrade() drops table {table}, which "
                                         "this revision's upgrade did not create", undo),
                                     statement.lines))
            elif isinstance(node, ast.AlterTableStmt):
                table = node.relation.relname
                for cmd in node.cmds:
                    if (cmd.subtype == AlterTableType.AT_DropColumn and table not in tables
                            and (table, cmd.name) not in columns):
                        hits.append((Hit("MIG018", f"downgrade() drops column {table}."
                                         f"{cmd.name}, which this revision's upgrade did not "
                                         "add", undo), statement.lines))
    return hits


def _render_failure(rendered: Rendered) -> Hit:
    from orchestrator.migrations.lint.rules import Hit

    return Hit(
        "MIG009",
        f"cannot be rendered as PostgreSQL SQL offline ({rendered.error}): `db upgrade --sql` "
        "fails on it, and the linter checked only what comes before this line",
        "make upgrade() run without a database when `op.get_context().as_sql` is true (skip "
        "what needs to read rows, as 003 does), so that its SQL can be reviewed",
    )


def _loop_hit(statement_line: int) -> Hit:
    from orchestrator.migrations.lint.rules import AUTOCOMMIT, Hit

    return Hit(
        "MIG022",
        f"changes rows in a loop, one statement per row or batch (line {statement_line}), inside "
        "the migration's transaction: every row changed stays locked, and the table with it if "
        "it was altered, until the last one is done",
        "change the rows with one statement per batch of a few thousand (`UPDATE … WHERE id "
        f">= :low AND id < :high`), each batch committed on its own inside {AUTOCOMMIT}",
    )


def _shorten(sql: str, limit: int = 80) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _findings(rendered: Rendered, source: Source, hits, accepted) -> list[LintFinding]:
    """One finding per rule and line, less what a review comment or validate.toml accepts."""
    findings: dict[tuple[str, int | None], LintFinding] = {}
    for hit, lines in hits:
        line = lines[0] if lines else None
        if (hit.code, line) in findings:
            continue
        if any(a.revision == rendered.revision and a.code == hit.code for a in accepted):
            continue
        ignore = source.ignore_for(lines, hit.code)
        fix = hit.fix
        if ignore is not None:
            if ignore.reason:
                continue
            fix += (f"; the `# validate: ignore[{hit.code}]` comment here needs a reason after "
                    "it to count")
        message = f"revision {rendered.revision}: {hit.message}"
        if len(lines) > 1:
            message += f" (called from line {lines[-1]})"
        findings[(hit.code, line)] = LintFinding(hit.code, message, fix, rendered.path, line,
                                                 rendered.revision)
    return sorted(findings.values(), key=lambda f: (f.line or 0, f.code))
