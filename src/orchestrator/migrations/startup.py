"""The start-up migration policy, shared by the API's lifespan and anything else that boots.

Development with AUTO_MIGRATE upgrades to head (through the migration lock, so replicas that
start together migrate once). Everywhere else nothing is migrated: a warning names the command
to run, and the service reports the schema as not ready until it has been run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from orchestrator.migrations.errors import DatabaseAheadError, DatabaseUnreachableError
from orchestrator.migrations.manager import MigrationManager, MigrationStatus

logger = logging.getLogger("orchestrator.startup")


@dataclass
class StartupReport:
    """What start-up found and did."""

    applied: list[str] = field(default_factory=list)
    status: MigrationStatus | None = None
    # Why the schema is not usable yet, when it is not.
    problem: str | None = None


def prepare_database(settings, manager: MigrationManager) -> StartupReport:
    """Apply the start-up policy; raises when the service must not start."""
    report = StartupReport()
    production = settings.environment.needs_database_to_start
    try:
        status = manager.status()
    except DatabaseUnreachableError as exc:
        if production:
            raise
        report.problem = str(exc)
        logger.warning("database unreachable at start-up: %s", exc)
        return report
    if status.ahead:
        raise DatabaseAheadError(
            f"{DatabaseAheadError.describe(status.current)}; "
            "refusing to start: deploy the code that has it, or roll the database back"
        )
    migrated = settings.auto_migrate and not status.up_to_date
    if migrated:
        before, pending, caller_progress = status.current, status.pending, manager.progress
        # Each step logged once, as it is done.
        manager.progress = lambda revision, seconds: logger.info(
            "applied %s in %.2fs", revision, seconds
        )
        try:
            report.applied = manager.upgrade()
        finally:
            manager.progress = caller_progress
        status = manager.status()
        if report.applied:
            logger.info("migrated the database from %s to %s", before or "base", status.current)
        elif pending:
            # We waited for the lock while another process (a replica starting beside us)
            # brought the database to head.
            logger.info("another process migrated the database to %s while this one waited",
                        status.current)
    if status.interrupted is not None and not status.interrupted.running:
        report.problem = status.interrupted.describe()
        logger.warning("a migration did not finish: %s", report.problem)
    elif not status.up_to_date:
        report.problem = (
            f"the database is at {status.current or 'base'} and head is {status.head} "
            f"(pending: {', '.join(status.pending) or 'none'}); "
            "run `orchestrator db upgrade` to migrate it"
        )
        logger.warning("schema is behind: %s", report.problem)
    elif not migrated:
        logger.info("database schema is at head %s", status.head)
    report.status = status
    return report
