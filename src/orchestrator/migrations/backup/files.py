"""Writing a backup file: the copy goes into a hidden partial file, locked while it is written
and deleted if the copy fails or is interrupted; once checked complete it gets its final name
(`<database>-<UTC time>-<revision>-<reason>.<extension>` in the backup folder, or `--output`)
and then its sidecar. A backup killed midway leaves only its partial file, which the next
backup into the same folder deletes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from orchestrator.db import backend_name, sqlite_path
from orchestrator.migrations.backup.identity import database_identity
from orchestrator.migrations.backup.info import SQLITE_MAGIC, BackupInfo, sidecar_path
from orchestrator.migrations.backup.pgtools import archive_listing
from orchestrator.migrations.backup.sidecar import write_sidecar
from orchestrator.migrations.errors import BackupError

_EXTENSIONS = {"sqlite": ".sqlite", "postgresql": ".dump"}
SIDE_FILES = ("-wal", "-journal", "-shm")  # what SQLite keeps beside a database file
# A backup being written: hidden, and locked (flock) by the process writing it.
_PARTIAL = ".partial"


def write_backup(
    database_url: str,
    backup_dir: Path,
    output: Path | None,
    reason: str,
    copy: Callable[[Path], str | None],
    *,
    unknown: bool = False,
    durable: bool = False,
) -> BackupInfo:
    """Run `copy` into a temporary file beside the backup's final place (it returns the
    revision), then give the file its final name and its sidecar.

    `durable`: fsync the backup before returning, for a backup whose loss would lose data (the
    state a restore is about to replace).
    """
    if output is not None and (output.exists() or sidecar_path(output).exists()):
        raise BackupError(f"{output} already exists; choose another --output or delete it first")
    folder = output.parent if output is not None else backup_dir
    hint = "choose another --output" if output is not None else "set BACKUP_DIR to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup folder {folder}: {exc.strerror}; {hint}") from None
    created_at = dt.datetime.now(dt.UTC)
    dialect = backend_name(database_url)
    try:
        remove_stale_partials(folder)
        with _partial_file(folder, _name_of(database_url)) as temporary:
            revision = copy(temporary)
            if not unknown:
                _check_complete(database_url, temporary)
            if output is not None:
                path = output
            else:
                stamp = created_at.strftime("%Y%m%dT%H%M%S%fZ")
                label = "unknown" if unknown else revision or "base"
                path = backup_dir / (f"{_name_of(database_url)}-{stamp}-{label}-{reason}"
                                     f"{_EXTENSIONS[dialect]}")
            if durable:
                fsync(temporary)
            _move(temporary, path)
        if durable:
            fsync(folder)
    except OSError as exc:  # a read-only folder, a full disk
        # Named by its place (not by the hidden partial file the copy was going into).
        where = output if output is not None else folder
        raise BackupError(f"cannot write the backup {where}: {exc.strerror}; {hint}") from None
    info = BackupInfo(
        path=path,
        dialect=dialect,
        database=database_identity(database_url),
        revision=revision,
        created_at=created_at,
        reason=reason,
        size=path.stat().st_size,
        automatic_name=output is None,
    )
    write_sidecar(info)
    return info


def _name_of(database_url: str) -> str:
    path = sqlite_path(database_url)
    return path.stem if path is not None else make_url(database_url).database


@contextlib.contextmanager
def _partial_file(folder: Path, name: str) -> Iterator[Path]:
    """A new hidden file in `folder`, locked while the block writes it, deleted if the block
    fails (or is interrupted); the block moves it to its final name when it succeeds."""
    temporary = folder / f".{name}-{uuid.uuid4().hex[:12]}{_PARTIAL}"
    handle = open(temporary, "xb")  # noqa: SIM115 - its lock lasts the whole block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield temporary
    finally:
        try:
            for leftover in (temporary, *side_files(temporary)):
                leftover.unlink(missing_ok=True)
        finally:
            handle.close()


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete what backups killed midway left in `folder` (a backup still being written holds
    a lock on its file, and is left alone)."""
    removed = []
    for partial in folder.glob(f".*{_PARTIAL}"):
        try:
            handle = open(partial, "rb")  # noqa: SIM115
        except FileNotFoundError:  # removed meanwhile (or a link to nothing)
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            for leftover in (partial, *side_files(partial)):
                leftover.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in SIDE_FILES[:2]]


def _move(temporary: Path, path: Path) -> None:
    if path.exists():  # an --output made meanwhile is never overwritten
        raise BackupError(f"{path} already exists; choose another --output or delete it first")
    for side, final in zip(side_files(temporary), side_files(path), strict=True):
        if side.exists():
            os.replace(side, final)
    os.replace(temporary, path)


def _check_complete(database_url: str, path: Path) -> None:
    """A copy that ended early is not a backup: a SQLite file as long as its header says, a
    pg_dump archive whose table of contents pg_restore can read."""
    if backend_name(database_url) == "postgresql":
        archive_listing(database_url, path)
        return
    with open(path, "rb") as data:
        header = data.read(100)
    size = path.stat().st_size
    page_size = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big") if len(header) == 100 else 0
    if header[:16] != SQLITE_MAGIC or size == 0 or size != page_size * pages:
        raise BackupError(
            f"the copy of the database came out incomplete ({size} bytes, its header says "
            f"{page_size * pages}); nothing was kept: back up again"
        )


def fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
