"""What a rehearsal measured, its verdict, and the report an operator reads (text or JSON).

Nothing here prints: `render_text` returns the text, `Rehearsal.as_dict` the JSON document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from orchestrator.migrations.errors import ExitCode
from orchestrator.migrations.rehearse.locks import MODES, NONE, SEVERITY, WRITES

# SQLite locks the whole database file, not a table.
WHOLE_DATABASE = "(whole database)"
SQLITE_WRITE_LOCK = "write lock"


@dataclass
class Lock:
    """A lock the migration held: from the statement that took it to the end of its
    transaction (or, outside one, of the statement)."""

    relation: str
    mode: str
    blocks: str
    # The table had rows before the rehearsal (a new, empty table blocks nobody).
    had_rows: bool
    started: float = field(repr=False, default=0.0)
    held_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"relation": self.relation, "mode": self.mode, "held_s": _round(self.held_s),
                "blocks": self.blocks, "had_rows": self.had_rows}


@dataclass(frozen=True)
class Prediction:
    """A static finding of the linter for the same statement."""

    code: str
    name: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "name": self.name, "message": self.message}


@dataclass
class Statement:
    sql: str
    # Lines of the revision's script on the stack when it ran, innermost first.
    lines: tuple[int, ...]
    in_transaction: bool
    duration_s: float = 0.0
    locks: list[Lock] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)
    rows: int | None = None
    error: str | None = None
    predicted: list[Prediction] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "line": self.lines[-1] if self.lines else None,
            "in_transaction": self.in_transaction,
            "duration_s": _round(self.duration_s),
            "locks": [lock.as_dict() for lock in self.locks],
            "rewrites": list(self.rewrites),
            "rows": self.rows,
            "error": self.error,
            "predicted": [p.as_dict() for p in self.predicted],
        }


@dataclass
class Step:
    revision: str
    statements: list[Statement] = field(default_factory=list)
    duration_s: float = 0.0
    ok: bool = True
    error: str | None = None
    # SQLite: how much the database file grew (page count × page size), in bytes.
    file_growth_bytes: int | None = None

    @property
    def write_lock_s(self) -> float | None:
        """SQLite: how long the step held the whole database's write lock."""
        held = [lock.held_s or 0.0 for s in self.statements for lock in s.locks
                if lock.mode == SQLITE_WRITE_LOCK]
        return sum(held) if held else None

    def as_dict(self, dialect: str) -> dict[str, Any]:
        document = {
            "revision": self.revision,
            "duration_s": _round(self.duration_s),
            "ok": self.ok,
            "error": self.error,
            "statements": [s.as_dict() for s in self.statements],
        }
        if dialect == "sqlite":
            document["write_lock_s"] = _round(self.write_lock_s)
            document["file_growth_bytes"] = self.file_growth_bytes
        return document


@dataclass(frozen=True)
class CopyInfo:
    """The throwaway copy the migrations ran on."""

    name: str
    source: str  # "pg_dump of the database", "backup FILE", "SQLite backup of the database"
    seconds: float
    kept: bool


@dataclass
class Rehearsal:
    database: str  # masked
    engine: str
    from_revision: str | None
    to_revision: str | None
    max_blocking_s: float
    steps: list[Step] = field(default_factory=list)
    # Planned revisions that did not run because an earlier one failed.
    not_run: list[str] = field(default_factory=list)
    copy: CopyInfo | None = None

    def problems(self) -> list[str]:
        """Why the verdict fails, one line each (empty: it passes)."""
        problems = []
        for step in self.steps:
            if not step.ok:
                problems.append(f"{step.revision} failed on the copy: {step.error}")
            for statement, lock in _locks(step):
                if (lock.had_rows and lock.blocks != NONE
                        and (lock.held_s or 0.0) > self.max_blocking_s):
                    problems.append(
                        f"{step.revision} held {lock.mode} on {lock.relation} for "
                        f"{lock.held_s:.2f}s, blocking {lock.blocks} (limit "
                        f"{self.max_blocking_s:g}s): {_short(statement.sql, 60)}")
        return problems

    @property
    def ok(self) -> bool:
        return not self.problems()

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.CHECK_FAILED

    def as_dict(self) -> dict[str, Any]:
        problems = self.problems()
        return {
            "database": self.database,
            "engine": self.engine,
            "from": self.from_revision,
            "to": self.to_revision,
            "max_blocking_s": self.max_blocking_s,
            "copy": None if self.copy is None else {
                "name": self.copy.name, "source": self.copy.source,
                "seconds": _round(self.copy.seconds), "kept": self.copy.kept},
            "steps": [step.as_dict(self.engine) for step in self.steps],
            "not_run": list(self.not_run),
            "verdict": "pass" if not problems else "fail",
            "problems": problems,
        }


def render_text(rehearsal: Rehearsal, limit: int = 8) -> str:
    """The report: verdict, the worst findings first, then every statement per revision with
    the strongest lock it took on each table."""
    r = rehearsal
    lines = [f"Rehearsal of {r.database} ({r.engine}): {r.from_revision or 'base'} -> "
             f"{r.to_revision or 'base'}"]
    if r.copy is not None:
        fate = "kept" if r.copy.kept else "dropped"
        lines.append(f"  on a copy {r.copy.name} ({r.copy.source}, {r.copy.seconds:.2f}s; "
                     f"{fate})")
        if r.copy.kept:
            remove = (f"rm -r {PurePath(r.copy.name).parent}" if r.engine == "sqlite"
                      else f'DROP DATABASE "{r.copy.name}"')
            lines.append(f"  kept: remove it when done (`{remove}`); nothing sweeps a kept copy")
    if not r.steps:
        lines.append("Nothing to rehearse: no pending migration.")
        return "\n".join(lines)
    problems = r.problems()
    # A pass says what it checked; a fail says what broke (each problem names the limit).
    lines.append("Verdict: FAIL:" if problems else
                 "Verdict: PASS (every step ran; nothing blocked writes on a table with rows "
                 f"for more than {r.max_blocking_s:g}s)")
    lines += [f"  - {problem}" for problem in problems]
    worst = _worst(r)
    if worst:
        lines.append("")
        lines.append("Worst first:")
        lines += [f"  {text}" for _, text in worst[:limit]]
        if len(worst) > limit:
            lines.append(f"  … and {len(worst) - limit} more (--format json lists all)")
    for step in r.steps:
        lines.append("")
        extra = ""
        if step.write_lock_s is not None:
            extra = (f", write lock {step.write_lock_s:.3f}s, file "
                     f"{_signed_size(step.file_growth_bytes or 0)}")
        state = "ok" if step.ok else "FAILED"
        lines.append(f"{step.revision}  {state}  {step.duration_s:.3f}s{extra}")
        for statement in step.statements:
            lines.append(f"  {statement.duration_s:8.3f}s  {_short(statement.sql)}")
            details = _details(statement)
            lines += [f"             {detail}" for detail in details]
    if r.not_run:
        lines.append("")
        lines.append(f"Not run (after the failure): {', '.join(r.not_run)}")
    return "\n".join(lines)


def _strongest(locks: list[Lock]) -> list[Lock]:
    """One lock per table, the strongest mode it took (the JSON lists every mode)."""
    strongest: dict[str, Lock] = {}
    for lock in locks:
        known = strongest.get(lock.relation)
        if known is None or _rank(lock.mode) > _rank(known.mode):
            strongest[lock.relation] = lock
    return list(strongest.values())


def _rank(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def _details(statement: Statement) -> list[str]:
    details = []
    for lock in _strongest(statement.locks):
        held = "?" if lock.held_s is None else f"{lock.held_s:.3f}s"
        rows = "" if lock.had_rows else " (no rows)"
        details.append(f"{lock.mode} on {lock.relation}{rows} held {held}, blocks {lock.blocks}")
    if statement.rewrites:
        details.append(f"rewrites {', '.join(statement.rewrites)}")
    if statement.rows is not None:
        details.append(f"{statement.rows:,} rows")
    for prediction in statement.predicted:
        details.append(f"linter predicted {prediction.code} {prediction.name}")
    if statement.error:
        details.append(f"ERROR {statement.error}")
    return details


def _worst(r: Rehearsal) -> list[tuple[tuple, str]]:
    """Failures, then blocking locks on tables with rows (longest first), then rewrites."""
    found: list[tuple[tuple, str]] = []
    for step in r.steps:
        for statement in step.statements:
            if statement.error:
                found.append(((3, 0.0), f"{step.revision}  FAILED  {statement.error}"))
            for lock in _strongest(statement.locks):
                if lock.blocks == NONE or not lock.had_rows:
                    continue
                held = lock.held_s or 0.0
                predicted = _predicted(statement)
                found.append(((SEVERITY[lock.blocks], held),
                              f"{step.revision}  {held:8.3f}s  blocks {lock.blocks:<12} "
                              f"{lock.mode} on {lock.relation}: {_short(statement.sql, 50)}"
                              f"{predicted}"))
            for table in statement.rewrites:
                found.append(((SEVERITY[WRITES], statement.duration_s),
                              f"{step.revision}  {statement.duration_s:8.3f}s  rewrites "
                              f"{table}: {_short(statement.sql, 50)}"))
        if not step.ok and not any(s.error for s in step.statements):
            found.append(((3, 0.0), f"{step.revision}  FAILED  {step.error}"))
    found.sort(key=lambda item: item[0], reverse=True)
    return found


def _predicted(statement: Statement) -> str:
    if not statement.predicted:
        return ""
    return f"  [predicted: {', '.join(p.code for p in statement.predicted)}]"


def _locks(step: Step):
    for statement in step.statements:
        for lock in statement.locks:
            yield statement, lock


def _short(sql: str, limit: int = 70) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _signed_size(size: int) -> str:
    sign = "+" if size >= 0 else "-"
    size = abs(size)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{sign}{size:g} {unit}" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover - the loop always returns


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
