"""The validator's report: findings, skipped rules, what `since` left out, and progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

ERROR, WARNING = "error", "warning"


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



@dataclass(frozen=True)
class Rule:
    """A rule: its code, its name, and the function that checks it (given the Context)."""

    code: str
    name: str
    check: Callable[[Any], list[Finding]]


class Progress:
    """What `validate()` reports as it goes; the CLI draws it (a bar, or a line per rule)."""

    def rule_started(self, rule: Rule) -> None:
        """`rule` begins."""

    def step(self, done: int, total: int) -> None:
        """A migration step on the scratch database ended: `done` of about `total`."""

    def rule_done(self, rule: Rule, seconds: float, outcome: str) -> None:
        """`rule` ended after `seconds`: "passed", "N findings" or "skipped"."""

