"""Linting revisions: render each as PostgreSQL SQL, run the SQL rules statement by statement and
the source rules on its Python, then keep what no review accepted. `lint()` loads this module
when it runs (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.migrations.lint.findings import LintFinding, read_accepted
from orchestrator.migrations.lint.render import UPGRADE, Rendered, Statement, render
from orchestrator.migrations.lint.rules import AUTOCOMMIT, At, Hit, advance, batch_hit, check
from orchestrator.migrations.lint.source import Source, read_source
from orchestrator.migrations.lint.sql import (
    AlterTableType,
    ObjectType,
    ParseError,
    Schema,
    ast,
    names,
    parse,
)

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory


def lint_revisions(script: ScriptDirectory, revisions: Sequence[str],
                   first: int = 0) -> list[LintFinding]:
    """The findings of every revision, oldest first (`revisions` in chain order); with `first`,
    of `revisions[first:]` only."""
    schema = Schema()
    # What the revisions before `first` built decides whether a later change is dangerous (a
    # column's type, a CHECK that proves NOT NULL, an index's table): their upgrade SQL is
    # applied to the schema, as when they are judged, and nothing else is done with them.
    for upgrade in render(script, revisions[:first], (UPGRADE,)):
        _build(upgrade, schema)
    rendered = render(script, revisions[first:])
    accepted = read_accepted(Path(script.dir))
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


def _build(upgrade: Rendered, schema: Schema) -> None:
    """The schema changed as the revision's upgrade SQL changes it (what `advance` applies)."""
    for _, node in _parsed(upgrade):
        schema.apply(node)


def _parsed(rendered: Rendered) -> Iterator[tuple[Statement, ast.Node]]:
    """Each statement's parsed nodes, passing over SQL PostgreSQL cannot parse (which the SQL
    rules report where they judge the upgrade)."""
    for statement in rendered.statements:
        try:
            nodes = parse(statement.sql)
        except ParseError:
            continue
        for node in nodes:
            yield statement, node


def _lint_revision(upgrade: Rendered, downgrade: Rendered, schema, accepted) -> list[LintFinding]:
    source = Source.parse(upgrade.path, read_source(Path(upgrade.path)))
    hits, at = _sql_hits(upgrade, schema)
    for table, lines in upgrade.batch_recreates:
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
    hits = []
    undo = "undo only what upgrade() did"
    for statement, node in _parsed(rendered):
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
    return Hit(
        "MIG009",
        f"cannot be rendered as PostgreSQL SQL offline ({rendered.error}): `db upgrade --sql` "
        "fails on it, and the linter checked only what comes before this line",
        "make upgrade() run without a database when `op.get_context().as_sql` is true (skip "
        "what needs to read rows, as 003 does), so that its SQL can be reviewed",
    )


def _loop_hit(statement_line: int) -> Hit:
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
