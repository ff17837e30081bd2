"""The rules, each a small function of the Context with a docstring saying why it exists,
registered in one list (RULES). A rule returns its findings, or raises Skip when it cannot run
here."""

from __future__ import annotations

import ast

from orchestrator.migrations import forks
from orchestrator.migrations.validate.context import Context
from orchestrator.migrations.validate.dangerous import DANGEROUS
from orchestrator.migrations.validate.report import ERROR, Finding, Rule, Skip
from orchestrator.migrations.validate.schema import diff_schemas, schema_snapshot


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
    # The tables it has the same as the scratch database are not reflected again.
    live = schema_snapshot(ctx.database_url, ctx.schema_reader)
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


def round_trip(ctx: Context) -> list[Finding]:
    """Round trip. Upgrading, downgrading and upgrading again on a fresh database must give the
    same schema at every step, or a rollback leaves debris that the next upgrade trips on."""
    return ctx.scratch.round_trip(lowest=ctx.since_position)


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
    *DANGEROUS,
)

# Rules that migrate or render each revision: with `since`, they judge only the newer ones.
PER_REVISION = frozenset({"MIG008", *(rule.code for rule in DANGEROUS)})
