"""What the backup package hands out and takes: `BackupInfo`, `RestoreReport`, the `Progress`
and `Notify` callbacks, and the kinds of file it knows (by their first bytes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Progress callback: (bytes done, bytes in total or None when unknown).
Progress = Callable[[int, "int | None"], None]
# Told, in one line, what a restore waits for or ends (other sessions, a busy database).
Notify = Callable[[str], None]

SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
KINDS = {"sqlite": "a SQLite database", "postgresql": "a PostgreSQL pg_dump archive"}


@dataclass(frozen=True)
class BackupInfo:
    """One backup file and what its sidecar says about it."""

    path: Path
    dialect: str
    # Where it came from, without a password (None when the file has no sidecar).
    database: str | None
    # The revision the database was at (None: base, or unknown without a sidecar).
    revision: str | None
    created_at: dt.datetime
    reason: str
    size: int
    # Named by the tool in the backup folder, hence subject to BACKUP_KEEP (not an --output).
    automatic_name: bool = False

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did."""

    restored: BackupInfo
    # The backup of the state the restore replaced (None when there was no database).
    safety_backup: BackupInfo | None
    # The database's revision after the restore.
    revision: str | None
    # The restored database has tables but no revision (it was not made by these migrations,
    # or its version table was emptied): `db upgrade` will refuse it until it is stamped.
    unversioned: bool = False


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")
