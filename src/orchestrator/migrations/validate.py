"""The migration validator: rules that catch broken or dangerous migrations before production.

Each rule is a small function with a docstring saying why it exists; it returns findings (a rule
code, the file and line where possible, what is wrong and how to fix it) or raises `Skip` when
it cannot run here. Rules that read the scripts work anywhere. Rules that need a database use the
live one (drift, checksums) or a scratch one of the same kind (models, round trip): a temporary
SQLite file, or a temporary PostgreSQL database created beside the live one and dropped after.

`validate()` runs them against any scripts folder (`script_location`), so that the tests can
feed it broken migration sets.
"""

from __future__ import annotations

import ast
import contextlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.migrations import forks, lint
from orchestrator.migrations.environment import SCRIPT_DIRECTORY
from orchestrator.migrations.errors import MigrationError

if TYPE_CHECKING:
    from sqlalchemy import MetaData

    from orchestrator.migrations.manager import MigrationManager

ERROR, WARNING = "error", "warning"
# Tables that are bookkeeping, not schema.
_BOOKKEEPING = frozenset({"alembic_version", "migration_history"})
_DIALECTS = frozenset({"sqlite", "postgresql"})


class IrreversibleMigrationError(MigrationError):
    """A downgrade would cross a revision that declares itself irreversible."""


class Skip(Exception):
    """Raised by a rule that cannot run here; the message says why."""


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, how bad, where, and what to do about it."""

    code: str
    rule: str
    severity: str
    message: str
    fix: str
    file: str | None = None
    line: int | None = None

    @property
    def location(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line else self.file

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """A rule that did not run, and why."""

    code: str
    rule: str
    reason: str


@dataclass
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Codes of the rules that ran and found nothing.
    passed: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "strict": self.strict,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.as_dict() for f in self.findings],
            "skipped": [asdict(s) for s in self.skipped],
            "passed": self.passed,
        }


# -- the scripts, read without importing them ---------------------------------------------


@dataclass
class ScriptFile:
    """A revision script as its source says, so broken ones can be judged too."""

    path: Path
    source: str
    tree: ast.Module | None = None
    syntax_error: str | None = None
    revision: str | None = None
    # None when `down_revision` cannot be read statically.
    down_revisions: tuple[str, ...] | None = ()
    irreversible: bool = False
    constants: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ScriptFile:
        """Read as Python compiles it: the coding line (or UTF-8) decides the text, a byte-order
        mark is dropped; a file Python cannot read is reported with the line, not raised."""
        try:
            source = lint.read_source(path)
            tree = ast.parse(source, filename=str(path))
        except (SyntaxError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            line = getattr(exc, "lineno", None) or _decode_error_line(path, exc)
            script = cls(path=path, source="", syntax_error=f"line {line}: {_reason(exc)}")
            script.lines["revision"] = line
            return script
        script = cls(path=path, source=source, tree=tree)
        for node in script.tree.body:
            target, value = _assignment(node)
            if target is None:
                continue
            script.lines.setdefault(target, node.lineno)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                script.constants[target] = value.value
            if target == "revision":
                script.revision = script.constants.get("revision")
            elif target == "down_revision":
                script.down_revisions = _revision_tuple(value)
            elif target == "irreversible":
                script.irreversible = isinstance(value, ast.Constant) and value.value is True
        return script

    def function(self, name: str) -> ast.FunctionDef | None:
        for node in self.tree.body if self.tree else ():
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return node
        return None



def _decode_error_line(path: Path, exc: Exception) -> int:
    """The line of the first byte the file's encoding cannot decode (1 otherwise)."""
    start = getattr(exc, "start", None)
    if start is None:
        return 1
    return path.read_bytes()[:start].count(b"\n") + 1


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid {exc.encoding} text ({exc.reason}); save it as UTF-8 or fix its coding line"
    return getattr(exc, "msg", None) or str(exc)


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target = node.target
    else:
        return None, None
    return (target.id, node.value) if isinstance(target, ast.Name) else (None, None)


def _revision_tuple(value: ast.expr) -> tuple[str, ...] | None:
    if isinstance(value, ast.Constant) and value.value is None:
        return ()
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return (value.value,)
    if isinstance(value, (ast.Tuple, ast.List)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
    ):
        return tuple(e.value for e in value.elts)
    return None


def read_scripts(versions: Path) -> list[ScriptFile]:
    """Every revision script in a versions folder (as Alembic finds them), by file name."""
    return [
        ScriptFile.read(path)
        for path in sorted(versions.glob("*.py"))
        if path.name != "__init__.py" and not path.name.startswith(".#")
    ]


# -- the context the rules share ----------------------------------------------------------


class Context:
    """What the rules look at, computed once and on demand."""

    def __init__(
        self,
        database_url: str,
        script_location: str,
        strict: bool,
        metadata: MetaData | None,
    ) -> None:
        self.database_url = database_url
        self.script_location = script_location
        self.strict = strict
        self._metadata = metadata
        self._cleanup = contextlib.ExitStack()
        self._scratch: _Scratch | Skip | None = None

    def close(self) -> None:
        self._cleanup.close()

    @cached_property
    def manager(self) -> MigrationManager:
        from orchestrator.migrations.manager import MigrationManager

        manager = MigrationManager(self.database_url, script_location=self.script_location)
        self._cleanup.callback(manager.close)
        return manager

    @cached_property
    def scripts(self) -> list[ScriptFile]:
        return read_scripts(Path(self.manager.script.versions))

    @cached_property
    def metadata(self) -> MetaData:
        if self._metadata is not None:
            return self._metadata
        from orchestrator.models import Base

        return Base.metadata

    @cached_property
    def chain_findings(self) -> dict[str, list[Finding]]:
        """MIG001 and MIG002 findings, computed together from the scripts' own text."""
        return _chain_findings(self.scripts)

    @cached_property
    def fork(self) -> forks.Fork | None:
        """Where branches that each added migrations left the numbered chain forked."""
        return forks.describe(forks.read_refs(Path(self.manager.script.versions)))

    def require_chain(self) -> None:
        if self.chain_findings["MIG001"] or self.chain_findings["MIG002"] or self.fork:
            raise Skip("the scripts do not form one complete chain in number order (see MIG001, "
                       "MIG002, MIG023)")

    @cached_property
    def chain(self) -> tuple[str, ...]:
        return self.manager._chain

    @cached_property
    def lint(self) -> list[Finding]:
        """The linter's findings for every revision (orchestrator.migrations.lint)."""
        self.require_chain()
        return [
            Finding(f.code, f.name, self.severity(), f.message, f.fix, f.file, f.line)
            for f in lint.lint(self.manager.script, self.chain)
        ]

    def script_for(self, revision: str) -> ScriptFile:
        return next(s for s in self.scripts if s.revision == revision)

    def live_status(self):
        """The live database's status, or Skip when it cannot be read."""
        from orchestrator.migrations.errors import DatabaseUnreachableError

        try:
            status = self.manager.status()
        except DatabaseUnreachableError as exc:
            raise Skip(f"no database to compare with: {exc}") from None
        if not status.database_exists:
            raise Skip(f"the database {self.manager.masked_url} does not exist yet")
        return status

    @property
    def scratch(self) -> _Scratch:
        """A scratch database migrated to head one step at a time (Skip when it cannot be)."""
        self.require_chain()
        if isinstance(self._scratch, Skip):
            # Tried once already: several rules need it, one unreachable server is enough.
            raise Skip(str(self._scratch))
        if self._scratch is None:
            try:
                url = self._cleanup.enter_context(scratch_database(self.database_url))
            except Skip as skip:
                self._scratch = skip
                raise
            self._scratch = _Scratch(url, self)
            self._cleanup.callback(self._scratch.close)
            self._scratch.climb()
        return self._scratch

    def severity(self) -> str:
        return ERROR if self.strict else WARNING


# -- the rules ----------------------------------------------------------------------------


def single_head(ctx: Context) -> list[Finding]:
    """One head. Two heads mean two migrations were written in parallel from the same parent:
    `upgrade head` becomes ambiguous and the order of their changes is undefined."""
    return ctx.chain_findings["MIG001"]


def complete_chain(ctx: Context) -> list[Finding]:
    """A complete chain. Every revision must descend from one base through revisions that exist;
    a missing parent (a deleted or renamed file) or an unreadable script makes the history
    unloadable for every command."""
    return ctx.chain_findings["MIG002"]


def numbered_line(ctx: Context) -> list[Finding]:
    """One numbered line. Ids are numbers given in order, so two branches made from the same
    revision each add the same next id: after the merge two scripts claim it, or two revise
    the same parent, or one revises a script other than the one before it. Every command
    refuses such scripts; `orchestrator db rebase` renumbers one branch's after the other's."""
    fork = ctx.fork
    if fork is None:
        return []
    return [Finding("MIG023", "numbered-line", ERROR, fork.problem,
                    f"{forks.FIX.removeprefix('run ')}; it moves the migrations only this branch "
                    "has on top of the other line", str(fork.paths[-1]))]


def downgrades_implemented(ctx: Context) -> list[Finding]:
    """Every downgrade implemented. A rollback in production relies on `downgrade()` really undoing
    `upgrade()`; one that does nothing leaves the new schema under the old code. A revision
    that cannot be undone says so (`irreversible = True`) and downgrade refuses to cross it."""
    findings = []
    for script in ctx.scripts:
        if script.tree is None or script.irreversible:
            continue
        function = script.function("downgrade")
        if function is not None and not _does_nothing(function):
            continue
        what = "has no downgrade()" if function is None else "has a downgrade() that does nothing"
        findings.append(
            Finding(
                "MIG003",
                "downgrade-implemented",
                ERROR,
                f"revision {script.revision} {what}",
                "write a downgrade() that undoes upgrade(); if the change truly cannot be undone "
                "(data is destroyed), declare `irreversible = True` at module level and say why "
                "in the docstring",
                str(script.path),
                function.lineno if function else None,
            )
        )
    return findings


def models_match(ctx: Context) -> list[Finding]:
    """Models match the migrations. Autogenerate against a database built by the migrations must
    find nothing; otherwise the models describe a schema no migration builds, and the next
    `db create` silently picks up someone else's forgotten change."""
    scratch = ctx.scratch
    if scratch.failed:
        raise Skip("the migrations do not reach head on a fresh database (see MIG008)")
    return [
        Finding(
            "MIG004",
            "models-match",
            ERROR,
            f"the models and the migrations disagree: {difference}",
            "write a migration for the model change (`orchestrator db create -m \"...\"`), "
            "or change the models back to what the migrations build",
        )
        for difference in scratch.model_differences
    ]


def no_drift(ctx: Context) -> list[Finding]:
    """The live database matches its revision. A change made by hand (an index added in an
    emergency, a column altered) is invisible to the scripts: other databases never get it,
    and the next migration that touches the same object fails here."""
    ctx.require_chain()
    status = ctx.live_status()
    if status.ahead or status.unversioned:
        raise Skip(f"the database is not at a revision these scripts know ({status.current})")
    scratch = ctx.scratch
    position = ctx.manager._position(status.current)
    if position >= len(scratch.snapshots):
        raise Skip("the migrations do not reach the database's revision on a fresh database")
    live = schema_snapshot(ctx.database_url)
    fix = (
        "if the change is wanted, write a migration that makes it so every database gets "
        "it; otherwise undo the change by hand"
    )
    if status.interrupted is not None:
        # Not a change made by hand: what the interrupted step did before it stopped.
        fix = f"the difference is what it did before it stopped: {status.interrupted.describe()}"
    return [
        Finding(
            "MIG005",
            "no-drift",
            ERROR,
            f"the database differs from what the migrations build at "
            f"{status.current or 'base'}: {difference}",
            fix,
        )
        for difference in diff_schemas(scratch.snapshots[position], live)
    ]


def scripts_unchanged(ctx: Context) -> list[Finding]:
    """Applied scripts unchanged. A script edited after it ran no longer describes what this
    database went through: databases migrated before and after the edit differ silently."""
    ctx.require_chain()
    ctx.live_status()
    return [
        Finding(
            "MIG006",
            "scripts-unchanged",
            ERROR,
            f"revision {changed.revision} was edited after it was applied on "
            f"{changed.applied_at:%Y-%m-%d %H:%M} UTC (checksum {changed.applied_checksum[:12]}, "
            f"now {(changed.current_checksum or 'missing')[:12]})",
            "revert the file to what was applied (see `git log -p` of the file) and put the "
            "new change in a new revision",
            changed.path,
        )
        for changed in ctx.manager.changed_scripts()
    ]


def _lint_rule(code: str) -> Callable[[Context], list[Finding]]:
    def check(ctx: Context) -> list[Finding]:
        return [finding for finding in ctx.lint if finding.code == code]

    check.__doc__ = f"{code}: see orchestrator.migrations.lint and docs/migrations.md."
    return check


def round_trip(ctx: Context) -> list[Finding]:
    """Round trip. Upgrading, downgrading and upgrading again on a fresh database must give the
    same schema at every step, or a rollback leaves debris that the next upgrade trips on."""
    return ctx.scratch.round_trip()


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    check: Callable[[Context], list[Finding]]


RULES = (
    Rule("MIG001", "single-head", single_head),
    Rule("MIG002", "complete-chain", complete_chain),
    Rule("MIG003", "downgrade-implemented", downgrades_implemented),
    Rule("MIG004", "models-match", models_match),
    Rule("MIG005", "no-drift", no_drift),
    Rule("MIG006", "scripts-unchanged", scripts_unchanged),
    Rule("MIG008", "round-trip", round_trip),
    Rule("MIG023", "numbered-line", numbered_line),
    # What would take a table down on PostgreSQL under traffic (the linter, one rule each):
    # warnings, errors with --strict.
    *(Rule(rule.code, rule.name, _lint_rule(rule.code)) for rule in lint.RULES),
)


def validate(
    database_url: str,
    *,
    script_location: str = SCRIPT_DIRECTORY,
    strict: bool = False,
    metadata: MetaData | None = None,
    rules: Iterable[str] | None = None,
) -> ValidationReport:
    """Run the rules (all, or those whose codes are given) and report what they found."""
    from orchestrator.migrations.rehearse.copies import remove_stale

    selected = set(rules) if rules is not None else None
    report = ValidationReport(strict=strict)
    # Copies left by rehearsals that were killed (SIGKILL gives them no chance to clean up).
    remove_stale(database_url)
    ctx = Context(database_url, script_location, strict, metadata)
    try:
        for rule in RULES:
            if selected is not None and rule.code not in selected:
                continue
            try:
                findings = rule.check(ctx)
            except Skip as skip:
                report.skipped.append(Skipped(rule.code, rule.name, str(skip)))
                continue
            report.findings.extend(findings)
            if not findings:
                report.passed.append(rule.code)
    finally:
        ctx.close()
    return report


# -- the chain ----------------------------------------------------------------------------


def _chain_findings(scripts: list[ScriptFile]) -> dict[str, list[Finding]]:
    heads_found: list[Finding] = []
    broken: list[Finding] = []

    def problem(script: ScriptFile, message: str, fix: str, line_of: str = "down_revision"):
        broken.append(
            Finding("MIG002", "complete-chain", ERROR, message, fix, str(script.path),
                    script.lines.get(line_of))
        )

    by_id: dict[str, ScriptFile] = {}
    for script in scripts:
        if script.syntax_error:
            problem(script, f"{script.path.name} does not parse ({script.syntax_error})",
                    "fix the syntax error", "revision")
        elif script.revision is None or script.down_revisions is None:
            problem(script, f"{script.path.name} does not state its revision and down_revision "
                    "as plain strings", "write `revision = \"NNN\"` and "
                    "`down_revision = \"MMM\"` (or None for the first) at module level", "revision")
        elif script.revision in by_id:
            continue  # two branches each added this id: MIG023 names both files
        else:
            by_id[script.revision] = script
    parents = {rev: s.down_revisions or () for rev, s in by_id.items()}
    for revision, script in by_id.items():
        for parent in parents[revision]:
            if parent not in by_id:
                problem(script, f"revision {revision} follows {parent}, which does not exist",
                        f"restore the script of {parent}, or point down_revision at the "
                        "revision it should follow")
    bases = [rev for rev in by_id if not parents[rev]]
    if len(bases) > 1:
        for revision in bases[1:]:
            problem(by_id[revision], f"revision {revision} starts a second history (its "
                    f"down_revision is None, like {bases[0]}'s)",
                    "set its down_revision to the revision it follows")
    children = {parent for rev in by_id for parent in parents[rev]}
    heads = sorted(rev for rev in by_id if rev not in children)
    reachable = _ancestors(heads, parents)
    # A line cut off by a missing parent is reported above, not as a second head.
    heads = [head for head in heads if _ancestors([head], parents) & set(bases)]
    for revision in sorted(set(by_id) - reachable):
        problem(by_id[revision], f"revision {revision} is part of a cycle of down_revisions",
                "make the down_revisions form one line from the first revision to the last")
    if len(heads) > 1:
        heads_found.append(
            Finding(
                "MIG001",
                "single-head",
                ERROR,
                f"the scripts have {len(heads)} heads ({', '.join(heads)}): migrations were "
                "written in parallel from the same parent",
                "run `orchestrator db rebase`: it renumbers this branch's migrations to follow "
                "the other line's (docs/migrations.md, \"Working on a team\")",
                str(by_id[heads[-1]].path),
                by_id[heads[-1]].lines.get("down_revision"),
            )
        )
    return {"MIG001": heads_found, "MIG002": broken}


def _ancestors(heads: list[str], parents: dict[str, tuple[str, ...]]) -> set[str]:
    seen: set[str] = set()
    stack = list(heads)
    while stack:
        revision = stack.pop()
        if revision in seen or revision not in parents:
            continue
        seen.add(revision)
        stack.extend(parents[revision])
    return seen


def _does_nothing(function: ast.FunctionDef) -> bool:
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return all(
        isinstance(stmt, ast.Pass)
        or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
        or (isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt))
        for stmt in body
    )


# -- schemas ------------------------------------------------------------------------------


def schema_snapshot(database_url: str) -> dict[str, dict[str, Any]]:
    """Tables with their columns, keys, indexes and checks, in a form that compares with ==."""
    from sqlalchemy import inspect
    from sqlalchemy.pool import NullPool

    from orchestrator.db import create_engine

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            dialect = connection.dialect
            snapshot: dict[str, dict[str, Any]] = {}
            for table in sorted(set(inspector.get_table_names()) - _BOOKKEEPING):
                snapshot[table] = {
                    "columns": {
                        c["name"]: (c["type"].compile(dialect=dialect), c["nullable"],
                                    str(c.get("default")))
                        for c in inspector.get_columns(table)
                    },
                    "primary key": tuple(inspector.get_pk_constraint(table)["constrained_columns"]),
                    "foreign keys": sorted(
                        (fk["name"] or "", tuple(fk["constrained_columns"]), fk["referred_table"],
                         tuple(fk["referred_columns"]), str(fk.get("options", {}).get("ondelete")))
                        for fk in inspector.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                        for i in inspector.get_indexes(table)
                    ),
                    "unique constraints": sorted(
                        (u["name"] or "", tuple(u["column_names"]))
                        for u in inspector.get_unique_constraints(table)
                    ),
                    "checks": sorted(
                        (c["name"] or "", _condition(c["sqltext"]))
                        for c in inspector.get_check_constraints(table)
                    ),
                }
            return snapshot
    finally:
        engine.dispose()


_CAST = re.compile(r"::[a-z_ ]+(?:\[\])*")


def _condition(sql: str) -> str:
    # PostgreSQL prints a CHECK condition with the casts it inferred, and infers them anew
    # when a dump is restored ('a'::character varying::text for 'a'::character varying):
    # compare the conditions without their casts.
    return " ".join(_CAST.sub("", sql).split())


def diff_schemas(expected: dict[str, dict], actual: dict[str, dict]) -> list[str]:
    """What `actual` has or lacks compared with `expected`, one line per difference."""
    differences = [f"table {t} is missing" for t in sorted(set(expected) - set(actual))]
    differences += [f"table {t} is extra" for t in sorted(set(actual) - set(expected))]
    for table in sorted(set(expected) & set(actual)):
        want, have = expected[table], actual[table]
        for column in sorted(set(want["columns"]) | set(have["columns"])):
            a, b = want["columns"].get(column), have["columns"].get(column)
            if a != b:
                differences.append(
                    f"column {table}.{column}: expected {_column(a)}, found {_column(b)}"
                )
        for part in ("primary key", "foreign keys", "indexes", "unique constraints", "checks"):
            if want[part] != have[part]:
                differences.append(
                    f"{part} of {table}: expected {want[part]}, found {have[part]}"
                )
    return differences


def _column(spec: tuple | None) -> str:
    if spec is None:
        return "no such column"
    kind, nullable, default = spec
    text = f"{kind} {'NULL' if nullable else 'NOT NULL'}"
    return text if default == "None" else f"{text} DEFAULT {default}"


@contextlib.contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """An empty database of the same kind as `database_url`, removed afterwards."""
    from orchestrator.db import backend_name

    if backend_name(database_url) == "sqlite":
        folder = tempfile.mkdtemp(prefix="orchestrator-validate-")
        try:
            yield f"sqlite:///{Path(folder) / 'scratch.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from orchestrator.db import create_engine, mask_url

    name = f"orchestrator_validate_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 10})
    try:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0]
            raise Skip(
                f"cannot create a scratch database beside {mask_url(database_url)}: {reason}"
            ) from None
        try:
            yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class _Scratch:
    """The migrations run on an empty database: up one step at a time, then down and up again."""

    def __init__(self, url: str, ctx: Context) -> None:
        from orchestrator.migrations.manager import MigrationManager

        self.url = url
        self.ctx = ctx
        self.manager = MigrationManager(url, script_location=ctx.script_location)
        # snapshots[n]: the schema after the n-th revision (0: base).
        self.snapshots: list[dict[str, dict]] = []
        self.failed: Finding | None = None
        self.model_differences: list[str] = []

    def close(self) -> None:
        self.manager.close()

    def climb(self) -> None:
        self.snapshots.append(schema_snapshot(self.url))
        for revision in self.ctx.chain:
            try:
                self.manager.upgrade(revision)
            except MigrationError as exc:
                self.failed = self._finding(revision, "upgrade", f"upgrade fails on a fresh "
                                            f"database: {exc}", "fix upgrade() so that it runs "
                                            "from the previous revision's schema")
                return
            self.snapshots.append(schema_snapshot(self.url))
        self.model_differences = self._compare_models()

    def round_trip(self) -> list[Finding]:
        """From head down to base, each revision: down, up again, and down (pytest-alembic's
        up/down consistency), comparing the schema with the one first built at every stop."""
        if self.failed is not None:
            return [self.failed]
        chain = self.ctx.chain
        for position in range(len(chain), 0, -1):
            revision = chain[position - 1]
            if self.ctx.script_for(revision).irreversible:
                return []  # downgrade refuses to cross it, by design
            below = chain[position - 2] if position > 1 else "base"
            try:
                self.manager.downgrade(below)
            except MigrationError as exc:
                return [self._finding(revision, "downgrade", f"downgrade fails: {exc}",
                                      "fix downgrade() so that it runs from this revision's "
                                      "schema")]
            differences = diff_schemas(self.snapshots[position - 1], schema_snapshot(self.url))
            if differences:
                return [self._finding(
                    revision, "downgrade",
                    f"downgrade does not restore the schema of {below}: " + "; ".join(differences),
                    "make downgrade() undo exactly what upgrade() does")]
            try:
                self.manager.upgrade(revision)
            except MigrationError as exc:
                return [self._finding(revision, "upgrade", f"upgrade fails the second time, "
                                      f"after its downgrade: {exc}", "make downgrade() remove "
                                      "everything upgrade() adds, data included")]
            differences = diff_schemas(self.snapshots[position], schema_snapshot(self.url))
            if differences:
                return [self._finding(
                    revision, "upgrade",
                    "upgrading again after its downgrade gives another schema: "
                    + "; ".join(differences),
                    "make upgrade() depend only on the previous revision's schema")]
            self.manager.downgrade(below)
        return []

    def _finding(self, revision: str, function: str, message: str, fix: str) -> Finding:
        script = self.ctx.script_for(revision)
        node = script.function(function)
        return Finding("MIG008", "round-trip", ERROR, f"revision {revision}: {message}", fix,
                       str(script.path), node.lineno if node else None)

    def _compare_models(self) -> list[str]:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext
        from sqlalchemy.pool import NullPool

        from orchestrator.db import create_engine
        from orchestrator.migrations.environment import include_object

        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={"compare_type": True, "include_object": include_object,
                          "target_metadata": self.ctx.metadata},
                )
                differences = compare_metadata(context, self.ctx.metadata)
                return [_describe_diff(diff) for diff in _flatten(differences)]
        finally:
            engine.dispose()


def _flatten(diffs: list) -> Iterator[tuple]:
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped
            yield from diff
        else:
            yield diff


def _describe_diff(diff: tuple) -> str:
    """Autogenerate's tuples, in words."""
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        where = "in the models only" if kind == "add_table" else "in the migrations only"
        return f"table {diff[1].name} is {where}"
    if kind in ("add_column", "remove_column"):
        where = "in the models only" if kind == "add_column" else "in the migrations only"
        return f"column {diff[2]}.{diff[3].name} is {where}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint",
                "add_fk", "remove_fk"):
        obj = diff[1]
        where = "in the models only" if kind.startswith("add") else "in the migrations only"
        table = getattr(getattr(obj, "table", None), "name", None) or getattr(obj, "parent", None)
        return f"{kind.split('_', 1)[1]} {obj.name} on {table} is {where}"
    if kind.startswith("modify_"):
        _, _schema, table, column, _info, migrations, models = diff
        return (f"{kind.removeprefix('modify_')} of {table}.{column}: the migrations give "
                f"{migrations}, the models {models}")
    return str(diff)  # pragma: no cover - autogenerate kinds not produced by these models
