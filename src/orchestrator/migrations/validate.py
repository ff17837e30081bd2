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
import functools
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.migrations import forks, lint
from orchestrator.migrations.environment import SCRIPT_DIRECTORY, running_with
from orchestrator.migrations.errors import (  # noqa: F401 - re-exported
    GitRefError,
    IrreversibleMigrationError,
    MigrationError,
    first_line,
)

if TYPE_CHECKING:
    from sqlalchemy import MetaData

    from orchestrator.migrations.manager import MigrationManager

ERROR, WARNING = "error", "warning"
# Tables that are bookkeeping, not schema.
_BOOKKEEPING = frozenset({"alembic_version", "migration_history"})
_DIALECTS = frozenset({"sqlite", "postgresql"})


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


@dataclass(frozen=True)
class Since:
    """What `validate(since=...)` left out: the revisions its per-revision rules did not judge."""

    revision: str
    rules: list[str]
    checked: list[str]
    not_checked: list[str]
    reason: str

    def describe(self) -> str:
        def span(revisions: list[str]) -> str:
            if not revisions:
                return "none"
            return revisions[0] if len(revisions) == 1 else f"{revisions[0]}-{revisions[-1]}"

        rules = ", ".join(self.rules) or "no per-revision rule"
        return (f"since {self.revision}: {rules} checked {len(self.checked)} revision"
                f"{'s' * (len(self.checked) != 1)} ({span(self.checked)}) and skipped "
                f"{len(self.not_checked)} ({span(self.not_checked)}): {self.reason}")


@dataclass
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Codes of the rules that ran and found nothing.
    passed: list[str] = field(default_factory=list)
    strict: bool = False
    # With `since`: what the per-revision rules left out.
    since: Since | None = None

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
            **({"since": asdict(self.since)} if self.since is not None else {}),
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
        since: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.database_url = database_url
        self.script_location = script_location
        self.strict = strict
        self.since = since
        self.progress = progress
        self._metadata = metadata
        self._cleanup = contextlib.ExitStack()
        self._scratch: _Scratch | Skip | None = None
        self._steps = (0, 0)
        self.schema_reader = SchemaReader()

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
        return self.manager.chain.revisions

    @cached_property
    def since_position(self) -> int:
        """How many revisions, from the first, `since` leaves to the chain rules (0: none)."""
        if self.since is None:
            return 0
        self.require_chain()
        if self.since not in self.chain:
            from orchestrator.migrations.errors import UnknownRevisionError

            raise UnknownRevisionError(
                f"--since {self.since}: no such revision in {self.script_location}; give one "
                "that `orchestrator db history` lists"
            )
        return self.chain.index(self.since) + 1

    @cached_property
    def lint(self) -> list[Finding]:
        """The linter's findings for every revision (orchestrator.migrations.lint); with
        `since`, for the revisions after it (the linter still reads the older ones: what they
        created decides whether a later change is dangerous)."""
        self.require_chain()
        checked = set(self.chain[self.since_position:])
        return [
            Finding(f.code, f.name, self.severity(), f.message, f.fix, f.file, f.line)
            for f in lint.lint(self.manager.script, self.chain)
            if f.revision in checked
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
            stops = self._stops()
            try:
                url = self._cleanup.enter_context(scratch_database(self.database_url))
            except Skip as skip:
                self._scratch = skip
                raise
            self._scratch = _Scratch(url, self)
            self._cleanup.callback(self._scratch.close)
            round_trip = len(self.chain) - self.since_position
            self._steps = (0, len(self.chain) + 3 * round_trip)
            self._scratch.climb(stops)
        return self._scratch

    def _stops(self) -> set[int]:
        """Where the climb takes a snapshot: every position the round trip compares with,
        and the live database's (for the drift rule)."""
        stops = set(range(self.since_position, len(self.chain) + 1))
        if self.since_position:
            with contextlib.suppress(Skip):
                status = self.live_status()
                if not (status.ahead or status.unversioned):
                    stops.add(self.manager.chain.position(status.current))
        return stops

    def steps_done(self, count: int) -> None:
        """`count` more migration steps ran on the scratch database."""
        done, total = self._steps
        self._steps = (done + count, total)
        if self.progress is not None:
            self.progress.step(done + count, total)

    def severity(self) -> str:
        return ERROR if self.strict else WARNING


class Progress:
    """What `validate()` reports as it goes; the CLI draws it (a bar, or a line per rule)."""

    def rule_started(self, rule: Rule) -> None:
        """`rule` begins."""

    def step(self, done: int, total: int) -> None:
        """A migration step on the scratch database ended: `done` of about `total`."""

    def rule_done(self, rule: Rule, seconds: float, outcome: str) -> None:
        """`rule` ended after `seconds`: "passed", "N findings" or "skipped"."""


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
    position = ctx.manager.chain.position(status.current)
    if position > scratch.reached:
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
    return ctx.scratch.round_trip(lowest=ctx.since_position)


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


# Rules that migrate or render each revision: with `since`, they judge only the newer ones.
_PER_REVISION = frozenset({"MIG008", *(rule.code for rule in lint.RULES)})


def validate(
    database_url: str,
    *,
    script_location: str = SCRIPT_DIRECTORY,
    strict: bool = False,
    metadata: MetaData | None = None,
    rules: Iterable[str] | None = None,
    since: str | None = None,
    progress: Progress | None = None,
) -> ValidationReport:
    """Run the rules (all, or those whose codes are given) and report what they found.

    With `since` (a revision of the chain), the rules that migrate or render each revision
    (the round trip, the dangerous operations) judge only the revisions after it; the chain
    rules, the models, drift and checksums still cover everything."""
    import time

    from orchestrator.migrations.rehearse.copies import remove_stale

    selected = set(rules) if rules is not None else None
    report = ValidationReport(strict=strict)
    # Copies left by rehearsals that were killed (SIGKILL gives them no chance to clean up).
    remove_stale(database_url)
    ctx = Context(database_url, script_location, strict, metadata, since, progress)
    try:
        if since is not None:
            with contextlib.suppress(Skip):  # a broken chain: the rules say so
                ctx.since_position  # noqa: B018 - an unknown revision is refused before any rule
        for rule in RULES:
            if selected is not None and rule.code not in selected:
                continue
            if progress is not None:
                progress.rule_started(rule)
            started = time.perf_counter()
            try:
                findings = rule.check(ctx)
            except Skip as skip:
                report.skipped.append(Skipped(rule.code, rule.name, str(skip)))
                outcome = "skipped"
            else:
                report.findings.extend(findings)
                if not findings:
                    report.passed.append(rule.code)
                outcome = f"{len(findings)} finding{'s' * (len(findings) != 1)}" if findings \
                    else "passed"
            if progress is not None:
                progress.rule_done(rule, time.perf_counter() - started, outcome)
        report.since = _narrowed(ctx, report)
    finally:
        ctx.close()
    return report


def _narrowed(ctx: Context, report: ValidationReport) -> Since | None:
    """What `since` left out, for the report."""
    if ctx.since is None or "since_position" not in ctx.__dict__:
        return None
    skipped = {s.code for s in report.skipped}
    codes = [code for code in (*report.passed, *sorted(report.codes()))
             if code in _PER_REVISION and code not in skipped]
    codes = sorted(set(codes), key=[rule.code for rule in RULES].index)
    position = ctx.since_position
    return Since(
        revision=ctx.since,
        rules=codes,
        checked=list(ctx.chain[position:]),
        not_checked=list(ctx.chain[:position]),
        reason=f"they are {ctx.since} and older: applied revisions do not change (MIG006 "
               "compares their checksums), and they were validated when they were new",
    )


def newest_revision_on_git_ref(
    ref: str, database_url: str, script_location: str = SCRIPT_DIRECTORY
) -> str | None:
    """The newest revision of the chain whose script is present on git `ref` (None: none is).

    A script counts as present when its file exists at the same path on `ref`: what a branch
    such as `origin/main` has is what was merged, reviewed and validated there."""
    import subprocess

    from orchestrator.migrations.manager import MigrationManager

    with MigrationManager(database_url, script_location=script_location) as manager:
        versions = Path(manager.script.versions).resolve()
        chain = manager.chain.revisions

    def git(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["git", "-C", str(versions), *args], capture_output=True,
                                  text=True, timeout=60)
        except FileNotFoundError:
            raise GitRefError(f"--since-git {ref}: git is not installed; install it or give "
                              "the revision with --since REV") from None

    top = git("rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise GitRefError(f"--since-git {ref}: {versions} is not in a git checkout; give the "
                          "revision with --since REV")
    if git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise GitRefError(f"--since-git {ref}: no such branch, tag or commit in "
                          f"{top.stdout.strip()}; fetch it first (`git fetch origin main`) or "
                          "name one that exists")
    listed = git("ls-tree", "-r", "--name-only", "--full-name", ref, "--", ".")
    root = Path(top.stdout.strip()).resolve()
    present = {(root / line).resolve() for line in listed.stdout.splitlines()}
    on_ref = {script.revision for script in read_scripts(versions) if script.path.resolve() in present}
    found = [revision for revision in chain if revision in on_ref]
    return found[-1] if found else None


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
    from sqlalchemy.pool import NullPool

    from orchestrator.db import create_engine

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return SchemaReader().snapshot(connection)
    finally:
        engine.dispose()


# One catalog query per snapshot: every table with everything its reflection reads (its
# definition and its indexes' on SQLite; columns, defaults, constraints and indexes as the
# server prints them on PostgreSQL). A table whose entry is unchanged is not reflected again.
_SQLITE_CATALOG = (
    "SELECT tbl_name, type, name, sql FROM sqlite_master "
    "WHERE tbl_name NOT LIKE 'sqlite~_%' ESCAPE '~'"
)
_POSTGRES_CATALOG = """
SELECT c.oid, concat_ws(E'\\n',
  (SELECT string_agg(concat_ws(':', a.attname, format_type(a.atttypid, a.atttypmod),
                               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
                               a.attgenerated, a.attcollation), ',' ORDER BY a.attnum)
   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT string_agg(concat_ws(' ', k.conname, k.contype, pg_get_constraintdef(k.oid)), ','
                     ORDER BY k.conname)
   FROM pg_constraint k WHERE k.conrelid = c.oid),
  (SELECT string_agg(pg_get_indexdef(x.indexrelid), ',' ORDER BY x.indexrelid::regclass::text)
   FROM pg_index x WHERE x.indrelid = c.oid))
FROM pg_class c
WHERE c.oid = ANY(CAST(:tables AS oid[]))
"""
# The tables, with how many indexes and constraints each has (a DROP INDEX or DROP CONSTRAINT
# deletes catalog rows and may write none), and the first transaction whose catalog changes a
# later snapshot must look at: ours when we have written, else the oldest one still running.
_POSTGRES_TABLES = """
SELECT c.relname, c.oid, coalesce(x.n, 0), coalesce(k.n, 0),
       (SELECT coalesce(txid_current_if_assigned(), txid_snapshot_xmin(txid_current_snapshot()))
        % 4294967296)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN (SELECT indrelid, count(*) AS n FROM pg_index GROUP BY indrelid) x ON x.indrelid = c.oid
LEFT JOIN (SELECT conrelid, count(*) AS n FROM pg_constraint GROUP BY conrelid) k
  ON k.conrelid = c.oid
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""
# The tables with a catalog row written since transaction :since (any DDL on a table writes
# one: its own, its columns', defaults', constraints', indexes', its referred tables' or its
# column types'): only their definitions are printed again.
_POSTGRES_TOUCHED = """
SELECT attrelid FROM pg_attribute WHERE xmin::text::bigint >= :since
UNION SELECT oid FROM pg_class WHERE xmin::text::bigint >= :since
UNION SELECT adrelid FROM pg_attrdef WHERE xmin::text::bigint >= :since
UNION SELECT conrelid FROM pg_constraint WHERE xmin::text::bigint >= :since
UNION SELECT k.conrelid FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid
  WHERE r.xmin::text::bigint >= :since
UNION SELECT k.conrelid FROM pg_constraint k JOIN pg_attribute ra ON ra.attrelid = k.confrelid
  WHERE ra.xmin::text::bigint >= :since
UNION SELECT indrelid FROM pg_index WHERE xmin::text::bigint >= :since
UNION SELECT x.indrelid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
  WHERE i.xmin::text::bigint >= :since
UNION SELECT a.attrelid FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
  WHERE t.xmin::text::bigint >= :since
"""


class SchemaReader:
    """Schema snapshots of databases of one kind, each from one catalog query: a table is
    reflected (SQLAlchemy's inspector, as `schema_snapshot` always did) only when its catalog
    entry is one this reader has not reflected yet, so a step that changes one table costs
    one table's reflection, not the whole schema's. Each snapshot is made from the last one
    and the tables whose catalog entries differ from the last one's (found by set operations
    on the catalog's rows, not a Python step per table): the schema is read whole at every
    snapshot, but only what changed is looked at."""

    def __init__(self) -> None:
        self._reflected: dict[tuple[str, Any], dict[str, Any]] = {}
        # The last snapshot, and what it was made from: SQLite's catalog rows and the tables
        # whose entries have a REFERENCES without columns; PostgreSQL's tables' definitions.
        self._last: dict[str, dict[str, Any]] = {}
        self._rows: frozenset[tuple] = frozenset()
        self._implicit_tables: frozenset[str] = frozenset()
        self._entries: dict[str, str] = {}
        # SQLite: whether a table's catalog entry has a REFERENCES without columns.
        self._implicit: dict[tuple, bool] = {}
        # PostgreSQL: each table's (by oid) index and constraint counts and printed
        # definition, and the first transaction whose changes they may not include.
        self._definitions: dict[int, tuple[tuple[int, int], str]] = {}
        self._since: int | None = None

    def snapshot(self, connection) -> dict[str, dict[str, Any]]:
        """The schema `connection` sees now (it reads in the connection's transaction)."""
        from sqlalchemy import inspect

        if connection.dialect.name == "sqlite":
            changes = self._sqlite_changes(connection)
        else:
            entries = self._postgres_catalog(connection)
            changes = dict.fromkeys(self._entries.keys() - entries.keys())
            changes.update(entries.items() - self._entries.items())
            self._entries = entries
        if not changes:
            return self._last
        inspector = None
        snapshot = dict(self._last)
        for table, entry in changes.items():
            if entry is None or table in _BOOKKEEPING:
                snapshot.pop(table, None)
                continue
            key = (table, entry)
            if key not in self._reflected:
                inspector = inspector or inspect(connection)
                self._reflected[key] = _reflect(inspector, table, connection.dialect)
            snapshot[table] = self._reflected[key]
        self._last = snapshot = dict(sorted(snapshot.items()))
        return snapshot

    def _sqlite_changes(self, connection) -> dict[str, Any]:
        """The tables whose catalog entries (what their reflection depends on) differ from
        the last snapshot's, each with its entry now (None: no longer a table)."""
        # The driver's cursor, in the connection's transaction: hundreds of rows per snapshot.
        cursor = connection.connection.cursor()
        try:
            rows = frozenset(cursor.execute(_SQLITE_CATALOG).fetchall())
        finally:
            cursor.close()
        different = rows ^ self._rows
        if not different:
            return {}
        touched = {row[0] for row in different}
        # A foreign key without a column list refers to the other table's primary key: such a
        # table is read again whenever anything changed.
        touched |= self._implicit_tables
        entries: dict[str, list[tuple]] = {table: [] for table in touched}
        for row in rows:
            if row[0] in touched:
                entries[row[0]].append(row)
        everything = None
        implicit = set(self._implicit_tables - touched)
        changes: dict[str, Any] = {}
        for table, entry_rows in entries.items():
            if not any(kind == "table" for _, kind, _, _ in entry_rows):
                changes[table] = None  # dropped (or a view)
                implicit.discard(table)
                continue
            entry = tuple(sorted(entry_rows, key=itemgetter(1, 2)))
            if entry not in self._implicit:
                self._implicit[entry] = any(_refers_implicitly(sql) for *_, sql in entry)
            if self._implicit[entry]:
                implicit.add(table)
                everything = hash(tuple(sorted(rows))) if everything is None else everything
                changes[table] = (entry, everything)
            else:
                implicit.discard(table)
                changes[table] = (entry, None)
        self._rows, self._implicit_tables = rows, frozenset(implicit)
        return changes

    def _postgres_catalog(self, connection) -> dict[str, Any]:
        """Each table's printed definition, printed again only for the tables whose catalog
        rows were written since the last snapshot (or whose counts changed)."""
        from sqlalchemy import text

        tables = connection.execute(text(_POSTGRES_TABLES)).all()
        horizon = tables[0][4] if tables else None
        stale = {oid for _, oid, indexes, constraints, _ in tables
                 if self._definitions.get(oid, (None,))[0] != (indexes, constraints)}
        if self._since is not None and horizon is not None and horizon >= self._since:
            stale |= set(connection.execute(text(_POSTGRES_TOUCHED),
                                            {"since": self._since}).scalars())
        else:  # the first snapshot (or transaction ids wrapped around): everything
            stale = {oid for _, oid, *_ in tables}
        counts = {oid: (indexes, constraints) for _, oid, indexes, constraints, _ in tables}
        stale &= set(counts)
        if stale:
            printed = connection.execute(text(_POSTGRES_CATALOG),
                                         {"tables": [str(oid) for oid in stale]}).all()
            for oid, definition in printed:
                self._definitions[oid] = (counts[oid], definition)
        if horizon is not None:
            self._since = horizon
        return {table: self._definitions[oid][1] for table, oid, *_ in tables}


_REFERENCES_COLUMNS = re.compile(r'REFERENCES\s+(?:"[^"]*"|`[^`]*`|\[[^\]]*\]|[^\s(]+)\s*\(',
                                 re.IGNORECASE)


def _refers_implicitly(sql: str | None) -> bool:
    """Whether a table's SQL may have a REFERENCES without its column list."""
    if not sql:
        return False
    return sql.upper().count("REFERENCES") != len(_REFERENCES_COLUMNS.findall(sql))


def _reflect(inspector, table: str, dialect) -> dict[str, Any]:
    return {
        "columns": {
            c["name"]: (c["type"].compile(dialect=dialect), c["nullable"], str(c.get("default")))
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


_CAST = re.compile(r"::[a-z_ ]+(?:\[\])*")


def _condition(sql: str) -> str:
    # PostgreSQL prints a CHECK condition with the casts it inferred, and infers them anew
    # when a dump is restored ('a'::character varying::text for 'a'::character varying):
    # compare the conditions without their casts.
    return " ".join(_CAST.sub("", sql).split())


def diff_schemas(expected: dict[str, dict], actual: dict[str, dict]) -> list[str]:
    """What `actual` has or lacks compared with `expected`, one line per difference."""
    if expected == actual:  # the same reflections (SchemaReader): nothing to list
        return []
    differences = [f"table {t} is missing" for t in sorted(set(expected) - set(actual))]
    differences += [f"table {t} is extra" for t in sorted(set(actual) - set(expected))]
    for table in sorted(set(expected) & set(actual)):
        want, have = expected[table], actual[table]
        if want is have:  # the same reflection, cached (SchemaReader)
            continue
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
            reason = first_line(exc)
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


class _StepFailed(Exception):
    """A scratch step failed: which revision, which way, and the error `db upgrade` or
    `db downgrade` would have raised."""

    def __init__(self, revision: str, upgrading: bool, error: MigrationError) -> None:
        super().__init__(str(error))
        self.revision = revision
        self.upgrading = upgrading
        self.error = error


class _Different(Exception):
    """A round-trip step left another schema than the one first built there."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


class _Scratch:
    """The migrations run on an empty database: up one step at a time, then down and up again.

    Every step runs through Alembic and the scripts' own env.py, as `db upgrade` runs it (one
    transaction per revision), on one connection held for the whole validation, with the
    scripts Alembic loaded once for every rule: a step costs the step, not a reload of the
    chain and a new connection.
    """

    def __init__(self, url: str, ctx: Context) -> None:
        from sqlalchemy.pool import NullPool

        from orchestrator.db import create_engine
        from orchestrator.migrations.manager import MigrationManager, alembic_config

        self.url = url
        self.ctx = ctx
        # Names a failed step as `db upgrade` and `db downgrade` would.
        self.manager = MigrationManager(url, script_location=ctx.script_location)
        self.script = ctx.manager.script
        self.config = alembic_config(url, script_location=ctx.script_location,
                                     db_lock_timeout=self.manager.db_lock_timeout)
        self.reader = ctx.schema_reader
        # snapshots[n]: the schema after the n-th revision (0: base), at the positions asked for.
        self.snapshots: dict[int, dict[str, dict]] = {}
        # The position the climb reached (revisions applied without error).
        self.reached = 0
        self.failed: Finding | None = None
        self.model_differences: list[str] = []
        self._engine = create_engine(url, poolclass=NullPool)
        self.connection = self._engine.connect()
        # The database is thrown away afterwards: no flush to disk at each of its commits.
        if self.connection.dialect.name == "sqlite":
            self.connection.connection.driver_connection.execute("PRAGMA synchronous=OFF")
        else:
            self.connection.exec_driver_sql("SET synchronous_commit = off")
            self.connection.commit()

    def close(self) -> None:
        self.connection.close()
        self._engine.dispose()
        self.manager.close()

    def snapshot(self) -> dict[str, dict]:
        """The schema now, outside a migration run."""
        try:
            return self.reader.snapshot(self.connection)
        finally:
            self.connection.rollback()

    def climb(self, stops: set[int]) -> None:
        """Up to head, one revision at a time, with a snapshot at each position in `stops`."""
        chain = self.ctx.chain
        if 0 in stops:
            self.snapshots[0] = self.snapshot()

        def applied(index: int) -> None:
            self.reached = index + 1
            if self.reached in stops:
                # In the step's transaction, on its connection: what the step built.
                self.snapshots[self.reached] = self.reader.snapshot(self.connection)

        try:
            self._run([(revision, True) for revision in chain], applied)
        except _StepFailed as failed:
            self.failed = self._finding(failed.revision, "upgrade", f"upgrade fails on a "
                                        f"fresh database: {failed.error}", "fix upgrade() so "
                                        "that it runs from the previous revision's schema")
            return
        self.model_differences = self._compare_models()

    def round_trip(self, lowest: int = 0) -> list[Finding]:
        """From head down to the revision after position `lowest`, each revision: down, up
        again, and down (pytest-alembic's up/down consistency), comparing the schema with the
        one first built at every stop."""
        if self.failed is not None:
            return [self.failed]
        chain = self.ctx.chain
        positions = []
        for position in range(len(chain), lowest, -1):
            if self.ctx.script_for(chain[position - 1]).irreversible:
                break  # downgrade refuses to cross it, by design
            positions.append(position)
        steps = [(chain[p - 1], upgrading) for p in positions for upgrading in (False, True, False)]

        def applied(index: int) -> None:
            position, phase = positions[index // 3], index % 3
            revision = chain[position - 1]
            below = chain[position - 2] if position > 1 else "base"
            if phase == 2:
                return
            differences = diff_schemas(self.snapshots[position - 1 + phase],
                                       self.reader.snapshot(self.connection))
            if not differences:
                return
            if phase == 0:
                raise _Different(self._finding(
                    revision, "downgrade",
                    f"downgrade does not restore the schema of {below}: " + "; ".join(differences),
                    "make downgrade() undo exactly what upgrade() does"))
            raise _Different(self._finding(
                revision, "upgrade",
                "upgrading again after its downgrade gives another schema: "
                + "; ".join(differences),
                "make upgrade() depend only on the previous revision's schema"))

        try:
            self._run(steps, applied)
        except _Different as different:
            return [different.finding]
        except _StepFailed as failed:
            if failed.upgrading:
                return [self._finding(failed.revision, "upgrade", f"upgrade fails the second "
                                      f"time, after its downgrade: {failed.error}", "make "
                                      "downgrade() remove everything upgrade() adds, data "
                                      "included")]
            return [self._finding(failed.revision, "downgrade", f"downgrade fails: "
                                  f"{failed.error}", "fix downgrade() so that it runs from "
                                  "this revision's schema")]
        return []

    def _run(self, steps: list[tuple[str, bool]], applied: Callable[[int], None]) -> None:
        """Run `steps` ((revision, upgrading), in order) in one Alembic run through the scripts'
        env.py, each in its own transaction as `db upgrade` runs them; `applied(i)` is called in
        step i's transaction once the step is done (raising stops the run, the step rolled
        back)."""
        from alembic.runtime.environment import EnvironmentContext

        revision_map = self.script.revision_map
        plan = [_step_class()(revision_map, self.script.get_revision(revision), upgrading)
                for revision, upgrading in steps]
        done = 0

        def step_done(**_: Any) -> None:
            nonlocal done
            index = done
            done += 1
            self.ctx.steps_done(1)
            applied(index)

        try:
            with running_with(self.config, connection=self.connection,
                              on_version_apply=step_done), \
                    EnvironmentContext(self.config, self.script, fn=lambda _heads, _ctx: plan,
                                       as_sql=False, starting_rev=None, destination_rev=None):
                self.script.run_env()
        except _Different:
            self._end_transaction()
            raise
        except Exception as exc:
            self._end_transaction()
            # A step fails before it is counted: the first one not done.
            revision, upgrading = steps[min(done, len(steps) - 1)]
            raise _StepFailed(revision, upgrading,
                              self.manager.step_failure(exc, revision, upgrading)) from exc

    def _end_transaction(self) -> None:
        self.connection.rollback()  # nothing to do when Alembic already rolled the step back

    def _finding(self, revision: str, function: str, message: str, fix: str) -> Finding:
        script = self.ctx.script_for(revision)
        node = script.function(function)
        return Finding("MIG008", "round-trip", ERROR, f"revision {revision}: {message}", fix,
                       str(script.path), node.lineno if node else None)

    def _compare_models(self) -> list[str]:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from orchestrator.migrations.environment import include_object

        try:
            context = MigrationContext.configure(
                self.connection,
                opts={"compare_type": True, "include_object": include_object,
                      "target_metadata": self.ctx.metadata},
            )
            differences = compare_metadata(context, self.ctx.metadata)
            return [_describe_diff(diff) for diff in _flatten(differences)]
        finally:
            self.connection.rollback()


@functools.cache
def _step_class() -> type:
    """Alembic's migration step, without its walk down the whole chain at each downgrade."""
    from alembic.runtime.migration import RevisionStep

    class Step(RevisionStep):
        def _unmerge_to_revisions(self, heads: set[str]) -> tuple[str, ...]:
            # Alembic takes, of the revisions a downgrade goes to, those that are not an
            # ancestor of another one, listing every ancestor of each (the whole chain below):
            # a step to one revision, from the only head, goes to that revision. Once per
            # downgrade, that walk made the round trip's cost grow with the square of the chain.
            # (The chain the validator walks is a line; a merge keeps Alembic's way.)
            linear = len(self.to_revisions) == 1 and not set(heads) - {self.revision.revision}
            return tuple(self.to_revisions) if linear else super()._unmerge_to_revisions(heads)

    return Step


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
