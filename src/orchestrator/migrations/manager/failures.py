"""What a failed upgrade or downgrade step is, and the one error it is reported as: the
connection ended (`ConnectionLostError`), the lock lost (`MigrationLockLost`), a transient
conflict, a table lock given up on, or the script's own failure (`MigrationFailedError`),
each naming the revision, where the database is left, and what to run next."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError

from orchestrator.migrations.chain import Chain, end_or_base
from orchestrator.migrations.errors import (
    ConnectionLostError,
    DatabaseLockTimeout,
    Fault,
    MigrationError,
    MigrationFailedError,
    MigrationLockLost,
    TransientDatabaseError,
    classify,
    first_line,
    one_line,
)

if TYPE_CHECKING:
    from orchestrator.migrations.backup import BackupInfo


def lock_lost(
    failed: str, upgrading: bool, *, current: str | None, lost: str | None
) -> MigrationLockLost:
    """The migration lock was lost (`lost` says how) during `failed`; `current`: the
    database's revision read afresh, or None when it cannot be read."""
    where = (f"the database is at {current}" if current is not None
             else "the database could not be read to tell its revision")
    command = ("`orchestrator db upgrade`" if upgrading
               else "the same `orchestrator db downgrade`")
    return MigrationLockLost(
        f"lost the migration lock ({lost}) during {failed}, and stopped "
        f"without committing it; {where}; run {command} again (another migrator may "
        "already be completing it)"
    )


def connection_lost(
    exc: BaseException, failed: str, upgrading: bool, *, autocommitted: bool,
    current: str | None, chain: Chain,
) -> ConnectionLostError:
    """The database ended the connection (`exc`) during `failed`; `autocommitted`: the step ran
    a statement outside a transaction; `current` as for `lock_lost`."""
    if current is None:
        current = end_or_base(chain.before(failed)) if upgrading else failed
        where = f"the database should be at {current} (it cannot be read now)"
    else:
        where = f"the database is at {current}"
    if autocommitted:
        left = (f"{failed} runs statements outside a transaction: what they did before the "
                "cut stays (an index built CONCURRENTLY, or an INVALID one), and running it "
                "again completes it")
    else:
        left = f"nothing of {failed} was committed"
    command = ("`orchestrator db upgrade`" if upgrading
               else "the same `orchestrator db downgrade`")
    return ConnectionLostError(
        f"migration {failed} was cut off: the database ended its connection "
        f"({one_line(exc)}); {left}; {where}; once the server is back, run {command} "
        "again (`--retries N` reconnects and goes on by itself)",
        revision=failed,
    )


def step_failed(
    exc: BaseException,
    failed: str,
    upgrading: bool,
    chain: Chain,
    backup: BackupInfo | None = None,
    rolled_back: bool = False,
) -> MigrationError:
    """The error for `failed`'s step failing with `exc` (`backup`: taken before the command;
    `rolled_back`: the whole command ran in one transaction, rolled back)."""
    reason = first_line(exc)
    if classify(exc) is Fault.LOCK_TIMEOUT:
        return DatabaseLockTimeout(
            f"migration {failed} gave up waiting for a table lock ({reason}); a long "
            "transaction holds it: retry later, or raise DB_LOCK_TIMEOUT or --retries"
        )
    fault = fault_of(exc)
    if fault is not None and fault[0] == "transient":
        undone = "was not applied" if upgrading else "was not undone"
        return TransientDatabaseError(
            f"migration {failed} met a conflict with another transaction "
            f"({one_line(fault[1])}) "
            f"and {undone}: transient: run it again or use `--retries N`"
        )
    # Upgrading, the failed revision was not applied; downgrading, it was not undone.
    last_good = chain.before(failed) if upgrading else failed
    where = f"the database is at {last_good or 'base'}"
    if rolled_back:
        where = (
            f"the whole command ran in one transaction and was rolled back: the database "
            f"is back at {backup.revision or 'base'}, as before the command (its backup: "
            f"{backup.path})"
        )
    elif backup is not None:
        where += f"; the backup taken before the command is {backup.path}"
    failure = f"migration {failed} failed: {type(exc).__name__}: {reason}"
    return MigrationFailedError(
        f"{failure}; {where}; fix the script and run the command again",
        revision=failed,
        failure=failure,
    )


def is_interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C, or an error raised while Ctrl-C was being handled (SQLAlchemy
    and Alembic clean up after an interrupted statement and may fail doing so)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fault_of(exc: BaseException | None) -> tuple[str, BaseException] | None:
    """("ended", the error) when the database ended the connection (or the server went away),
    ("transient", the error) for a conflict that running again resolves, else None; by error
    code and type, along the chain of errors (a failed cleanup after the cut, such as
    SQLAlchemy's PendingRollbackError, may be the one raised)."""
    while exc is not None:
        if isinstance(exc, DBAPIError):
            fault = classify(exc)
            if fault is Fault.ENDED:
                return "ended", exc
            if fault is Fault.TRANSIENT:
                return "transient", exc
        exc = exc.__cause__ or exc.__context__
    return None
