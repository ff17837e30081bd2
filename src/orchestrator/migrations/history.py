"""The applied history: one row per revision step in `migration_history`, and script checksums.

The table is not a model: the migration system creates it on demand beside the schema it
manages, and autogenerate ignores it (`environment.UNMANAGED_TABLES`). The manager records each
step as it starts, in a transaction of its own, as failed and `interrupted`; the step's own
transaction turns that row into a success as it commits, so the history and the schema cannot
disagree. A process killed mid-step leaves the `interrupted` row: on PostgreSQL a step that
builds indexes CONCURRENTLY has then done part of its work, and the row is what tells. A failed
step's transaction is rolled back with everything in it, so its row is updated afterwards, in
a transaction of its own.

Each row keeps the SHA-256 of the script as it was applied; a script whose file no longer has
that checksum was edited after it ran, and no longer describes what this database went through.
A script corrected after release on purpose (a rerun that now completes, the same schema) names
the checksums of its earlier versions in a module-level `valid_checksums = ("…",)`, as
Liquibase's `validCheckSum` does: databases that applied one of those are not told it changed.
"""

from __future__ import annotations

import ast
import datetime as dt
import getpass
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
)

from orchestrator import __version__
from orchestrator.migrations.errors import ScriptsChangedError  # noqa: F401 - tests import it here

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

HISTORY_TABLE = "migration_history"
UPGRADE, DOWNGRADE, STAMP = "upgrade", "downgrade", "stamp"
# The error of a step that started and did not finish: killed, interrupted, or still running.
INTERRUPTED = "interrupted"
# Error texts are kept whole for the operator, within reason.
_MAX_ERROR = 4000

_metadata = MetaData()
history_table = Table(
    HISTORY_TABLE,
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("revision", String(64), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("duration", Float, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("error", Text),
    Column("checksum", String(64)),
    Column("os_user", String(128), nullable=False),
    Column("host", String(255), nullable=False),
    Column("tool_version", String(32), nullable=False),
)


@dataclass(frozen=True)
class HistoryEntry:
    """One revision step as the database recorded it."""

    id: int
    revision: str
    direction: str
    started_at: dt.datetime
    duration: float
    success: bool
    error: str | None
    checksum: str | None
    os_user: str
    host: str
    tool_version: str

    @property
    def interrupted(self) -> bool:
        """The step started and did not finish (or is still running)."""
        return not self.success and self.error == INTERRUPTED

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": self.started_at.isoformat()}


@dataclass(frozen=True)
class ChangedScript:
    """An applied revision whose script no longer has the checksum it was applied with."""

    revision: str
    path: str
    applied_checksum: str
    # None when the file is gone.
    current_checksum: str | None
    applied_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "applied_at": self.applied_at.isoformat()}


def checksum(path: str | os.PathLike[str] | None) -> str | None:
    """The SHA-256 of a script file, or None when there is none."""
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """(name, value) of a module-level `name = value` or `name: T = value`, else (None, None):
    how a script's declarations are read without importing it."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target = node.target
    else:
        return None, None
    return (target.id, node.value) if isinstance(target, ast.Name) else (None, None)


def valid_checksums(path: str | os.PathLike[str]) -> frozenset[str]:
    """The checksums of earlier versions a script declares equivalent (`valid_checksums = (…)`
    at module level, string literals), read without importing it; empty when it has none or
    cannot be read."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    for node in tree.body:
        name, value = assignment(node)
        if name == "valid_checksums":
            try:
                sums = ast.literal_eval(value)
            except ValueError:
                return frozenset()
            if isinstance(sums, (tuple, list, set, frozenset)):
                return frozenset(v for v in sums if isinstance(v, str))
            return frozenset()
    return frozenset()


def operator() -> tuple[str, str]:
    """(OS user, host) of whoever runs this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - a uid without a passwd entry (containers)
        user = f"uid {os.getuid()}"
    return user, socket.gethostname()


def ensure_table(connection: Connection) -> None:
    """Create `migration_history` when it is missing (the caller commits)."""
    history_table.create(connection, checkfirst=True)


def record(
    connection: Connection,
    *,
    revision: str,
    direction: str,
    duration: float,
    success: bool = True,
    error: str | None = None,
    script_checksum: str | None = None,
    started_at: dt.datetime | None = None,
) -> int:
    """Insert one row on `connection`, in whatever transaction it is in (the caller commits);
    returns its id."""
    user, host = operator()
    if started_at is None:
        started_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=duration)
    return connection.execute(
        history_table.insert().values(
            revision=revision,
            direction=direction,
            started_at=started_at,
            duration=duration,
            success=success,
            error=error[:_MAX_ERROR] if error else None,
            checksum=script_checksum,
            os_user=user,
            host=host,
            tool_version=__version__,
        )
    ).inserted_primary_key[0]


def interrupted_step(connection: Connection) -> HistoryEntry | None:
    """The newest recorded step if it started and did not finish, else None (raises when there
    is no table). Asked by every status: the usual answer (none) costs one plain query."""
    newest = connection.exec_driver_sql(
        f"SELECT id FROM {HISTORY_TABLE} WHERE id = (SELECT max(id) FROM {HISTORY_TABLE}) "
        f"AND NOT success AND error = '{INTERRUPTED}'"
    ).scalar()
    if newest is None:
        return None
    row = connection.execute(
        select(history_table).where(history_table.c.id == newest)).mappings().one()
    return HistoryEntry(**{**row, "started_at": _aware(row["started_at"])})


def read(connection: Connection) -> list[HistoryEntry]:
    """Every recorded step, oldest first; empty when nothing was ever recorded."""
    if not inspect(connection).has_table(HISTORY_TABLE):
        return []
    rows = connection.execute(select(history_table).order_by(history_table.c.id)).mappings()
    return [HistoryEntry(**{**row, "started_at": _aware(row["started_at"])}) for row in rows]


def changed_scripts(
    entries: Iterable[HistoryEntry], applied: Iterable[str], paths: Mapping[str, str]
) -> list[ChangedScript]:
    """Applied revisions whose script differs from the one recorded when it last ran.

    Only the latest successful upgrade or stamp of each revision counts: a script edited while
    it was downgraded and then applied again describes the database correctly. Revisions with
    no recorded checksum (applied before the history existed) cannot be judged and are skipped.
    """
    latest: dict[str, HistoryEntry] = {}
    for entry in entries:
        if entry.success and entry.direction in (UPGRADE, STAMP) and entry.checksum:
            latest[entry.revision] = entry
    changed = []
    for revision in applied:
        entry = latest.get(revision)
        if entry is None:
            continue
        current = checksum(paths[revision])
        if current != entry.checksum and entry.checksum not in valid_checksums(paths[revision]):
            changed.append(
                ChangedScript(revision, paths[revision], entry.checksum, current, entry.started_at)
            )
    return changed


class Recorder:
    """Writes the history of one Alembic run (an upgrade or a downgrade of several steps)."""

    def __init__(self, direction: str, script_path: Callable[[str], str]) -> None:
        self.direction = direction
        self._script_path = script_path
        # What this run wrote, to write again if a rollback took the rows with it.
        self.written: list[dict[str, Any]] = []
        self._step_started = time.perf_counter()
        # The row recorded when the running step started: (its revision, its id).
        self._started: tuple[str, int] | None = None

    def step_started(self, connection: Connection, revision: str) -> None:
        """Record a step as it starts, as `interrupted`, and commit: a step killed midway
        stays recorded as such (called between two steps' transactions)."""
        self._step_started = time.perf_counter()
        row_id = record(
            connection,
            revision=revision,
            direction=self.direction,
            duration=0.0,
            success=False,
            error=INTERRUPTED,
            script_checksum=checksum(self._script_path(revision)),
            started_at=dt.datetime.now(dt.UTC),
        )
        connection.commit()
        self._started = (revision, row_id)

    def step_done(self, connection: Connection, revision: str, direction: str | None = None) -> None:
        """Record a successful step inside its own transaction (called by `on_version_apply`)."""
        self._write(connection, revision=revision, success=True, direction=direction)

    def step_failed(
        self, connection: Connection, revision: str, error: str, direction: str | None = None
    ) -> None:
        """Record the step that failed, on a connection outside the rolled-back transaction."""
        self._write(connection, revision=revision, success=False, error=error, direction=direction)

    def rewrite(self, connection: Connection) -> None:
        """Write this run's rows again (after a rollback or a restore took them away)."""
        self._started = None
        for row in self.written:
            record(connection, **row)

    def _write(self, connection: Connection, **row: Any) -> None:
        # Alembic reports the end of a step only: without a recorded start, a step lasts from
        # the end of the one before (the first one also carries loading env.py and the scripts).
        now = time.perf_counter()
        duration = now - self._step_started
        row.update(
            direction=row.get("direction") or self.direction,
            duration=duration,
            started_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=duration),
            script_checksum=checksum(self._script_path(row["revision"])),
        )
        self._step_started = now
        started, self._started = self._started, None
        self.written.append(row)
        if started is not None and started[0] == row["revision"]:
            connection.execute(
                history_table.update().where(history_table.c.id == started[1]).values(
                    duration=duration, success=row["success"],
                    error=row["error"][:_MAX_ERROR] if row.get("error") else None,
                    checksum=row["script_checksum"]))
            return
        record(connection, **row)


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
