"""The dangerous-operation rules: the migration linter (orchestrator.migrations.lint), one
validator rule per lint rule, judging what would take a table down on PostgreSQL under traffic
(warnings; errors with --strict)."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.migrations import lint
from orchestrator.migrations.validate.context import Context
from orchestrator.migrations.validate.report import Finding, Rule


def lint_rule(code: str) -> Callable[[Context], list[Finding]]:
    """The rule that reports the linter's findings of `code` (Context.lint runs the linter
    once for all of them)."""
    def check(ctx: Context) -> list[Finding]:
        return [finding for finding in ctx.lint if finding.code == code]

    check.__doc__ = f"{code}: see orchestrator.migrations.lint and docs/migrations.md."
    return check


DANGEROUS = tuple(Rule(rule.code, rule.name, lint_rule(rule.code)) for rule in lint.RULES)
