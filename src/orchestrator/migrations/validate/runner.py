"""`validate()`: run the rules (all, or some) against a scripts folder and a database, and
report what they found."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy import MetaData

from orchestrator.migrations import scratch
from orchestrator.migrations.environment import SCRIPT_DIRECTORY
from orchestrator.migrations.rehearse import copies
from orchestrator.migrations.validate.context import SCRATCH_PREFIX, Context
from orchestrator.migrations.validate.report import (
    Progress,
    Since,
    Skip,
    Skipped,
    ValidationReport,
)
from orchestrator.migrations.validate.rules import PER_REVISION, RULES


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
    rules, the models, drift and checksums still cover everything. Validations in one
    process run one at a time."""
    selected = set(rules) if rules is not None else None
    report = ValidationReport(strict=strict)
    with _one_at_a_time:
        # Scratch databases and rehearsal copies left by processes that were killed (SIGKILL gives
        # them no chance to clean up).
        scratch.remove_stale(database_url, [
            scratch.names(SCRATCH_PREFIX),
            (copies.DATABASE_PREFIX, copies.FOLDER_PREFIX)])
        ctx = Context(database_url, script_location, strict, metadata, since, progress)
        restore_collector = _collect_less()
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
            restore_collector()
    return report


def _collect_less() -> Callable[[], None]:
    """Python's collector, tuned for one validation (as mypy tunes it for a build): what is
    loaded by now is set aside (`gc.freeze`), and the youngest generation is collected after
    50,000 allocations instead of 700. A validation keeps every script, tree and snapshot of
    the chain alive to the end; with the defaults, collections walked that growing heap again
    and again, and a chain twice as long cost more than twice as much. Returns what puts the
    collector back as it was (nothing is unfrozen that someone else froze)."""
    thresholds = gc.get_threshold()
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])

    def restore() -> None:
        gc.set_threshold(*thresholds)
        if froze:
            gc.unfreeze()

    return restore


# Validations in one process run one at a time: Alembic's `op` and `context`, which every
# migration step goes through, are the process's own.
_one_at_a_time = threading.Lock()


def _narrowed(ctx: Context, report: ValidationReport) -> Since | None:
    """What `since` left out, for the report."""
    if ctx.since is None or "since_position" not in ctx.__dict__:
        return None
    skipped = {s.code for s in report.skipped}
    codes = [code for code in (*report.passed, *sorted(report.codes()))
             if code in PER_REVISION and code not in skipped]
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
