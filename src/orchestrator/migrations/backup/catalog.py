"""A database's backups in the backup folder, found by their sidecars: listing them, and
pruning those the tool named itself beyond the newest `keep` (never a file named with
`--output`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orchestrator.migrations.backup.identity import database_identity
from orchestrator.migrations.backup.info import BackupInfo
from orchestrator.migrations.backup.sidecar import read_sidecar


def list_backups(database_url: str, backup_dir: Path) -> list[BackupInfo]:
    """This database's backups in `backup_dir`, newest first."""
    identity = database_identity(database_url)
    found = []
    for sidecar in backup_dir.glob("*.json") if backup_dir.is_dir() else ():
        info = read_sidecar(sidecar.with_suffix(""))
        if info is not None and info.database == identity and info.path.exists():
            found.append(info)
    return sorted(found, key=lambda info: info.created_at, reverse=True)


def prune(
    database_url: str, backup_dir: Path, keep: int, *, exclude: Iterable[Path] = ()
) -> list[Path]:
    """Delete this database's backups beyond the newest `keep` that the tool named itself
    (never a file given with --output); returns the deleted files."""
    spared = {Path(path).resolve() for path in exclude}
    deleted = []
    named = [info for info in list_backups(database_url, backup_dir) if info.automatic_name]
    for info in named[keep:]:
        if info.path.resolve() in spared:
            continue
        info.path.unlink(missing_ok=True)
        info.sidecar.unlink(missing_ok=True)
        deleted.append(info.path)
    return deleted
