"""SQLite backups and restores.

A backup is a byte copy of the file taken while a read transaction holds it still (in WAL mode,
a copy through SQLite's backup API); a file SQLite cannot read is kept byte for byte. A restore
goes through SQLite's online backup API and holds the database's write lock from its first step
to its last: the safety copy of the state it replaces is taken between the two, so nothing is
committed between that copy and the restored content. A backup is checked page by page before
it may replace a database; a database file SQLite cannot read is replaced by a rename instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from orchestrator.db import sqlite_path
from orchestrator.migrations import version
from orchestrator.migrations.backup import limits
from orchestrator.migrations.backup.files import (
    SIDE_FILES,
    fsync,
    side_files,
    write_backup,
)
from orchestrator.migrations.backup.info import BackupInfo, Progress, RestoreReport
from orchestrator.migrations.errors import BackupError, NotABackupError

_CHUNK = 64 * 1024 * 1024
# Bytes a SQLite restore copies per step, and the cache that holds them (see restore_sqlite).
_RESTORE_STEP = 1024 * 1024
_RESTORE_CACHE_KIB = 4 * _RESTORE_STEP // 1024
_SQLITE_OK, _SQLITE_BUSY, _SQLITE_LOCKED = 0, 5, 6  # result codes of a backup step


# -- backing up ---------------------------------------------------------------------------


def backup_sqlite(source: Path, path: Path, progress: Progress | None) -> str | None:
    if not source.exists():
        raise BackupError(f"nothing to back up: {source} does not exist yet")
    # Why not `sqlite3.Connection.backup()`: it copies page by page through SQLite's pager and
    # takes 5 x the time of `cp` (0.48 s against 0.095 s for a 278 MB, 1,000,000-task file);
    # this copy takes 0.08 s. It is as consistent, for the reason given at BEGIN below.
    #
    # The descriptor we copy from is opened before the read lock is taken and closed only after
    # it is released: closing any descriptor of a file drops every POSIX lock this process
    # holds on it, SQLite's included (fcntl semantics), which would let writers in mid-copy.
    with open(source, "rb") as data:
        connection = _sqlite_connect(source, mode="rw")
        try:
            wal = _is_wal(connection)
            connection.execute("BEGIN")
            # The first read takes SQLite's SHARED lock (rolling back a hot journal first, if a
            # writer died): from here until COMMIT no writer can commit or spill pages into the
            # file, so its bytes are one consistent state, the one this revision is read from.
            revision = _sqlite_revision(connection)
            _copy_still(source, data, wal, path, progress)
            connection.execute("COMMIT")
        finally:
            connection.close()
    return revision


def _copy_still(source: Path, data, wal: bool, path: Path, progress: Progress | None) -> None:
    """Copy a database no writer can change meanwhile (a lock held by this process), through
    `data`, a descriptor opened before that lock was taken."""
    if wal:
        # In WAL mode committed pages live in the -wal file too, and checkpoints may write into
        # the main file under a reader: copy through SQLite instead. A new connection of this
        # process reads the last committed state; SQLite keeps the other's locks when it closes.
        reader = _sqlite_connect(source, mode="ro")
        try:
            _backup_api(reader, path)
        finally:
            reader.close()
    else:
        _copy_file(data, path, progress)


def _is_wal(connection: sqlite3.Connection) -> bool:
    return connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def keep_damaged_sqlite(source: Path, path: Path) -> None:
    # With its write-ahead log or journal, if it has one: they may hold its last commits.
    shutil.copyfile(source, path)
    for side, copy in zip(side_files(source), side_files(path), strict=True):
        if side.exists():
            shutil.copyfile(side, copy)
    return None


def _sqlite_revision(connection: sqlite3.Connection) -> str | None:
    return version.read_revision(version.dbapi_rows(connection), "sqlite")


def _copy_file(data, path: Path, progress: Progress | None) -> None:
    # sendfile copies inside the kernel, as fast as `cp`. Like `cp`, the copy is not fsynced
    # (except before a restore, see files.write_backup): it guards against a migration that
    # fails, and the database file keeps its own journal.
    size = os.fstat(data.fileno()).st_size
    with open(path, "r+b") as out:
        done = 0
        while done < size:
            sent = os.sendfile(out.fileno(), data.fileno(), done, min(_CHUNK, size - done))
            if sent == 0:  # the file ended early (cut by hand?): files._check_complete says so
                break
            done += sent
            if progress is not None:
                progress(done, size)


def _backup_api(connection: sqlite3.Connection, path: Path) -> None:
    destination = sqlite3.connect(path)
    try:
        # A fresh file needs no journal of its own: it is a backup only once its sidecar is
        # written, after the copy has completed.
        destination.execute("PRAGMA journal_mode=OFF")
        connection.backup(destination)
    finally:
        destination.close()


# -- damage -------------------------------------------------------------------------------


def sqlite_damage(database_url: str) -> str | None:
    """Why SQLite cannot read the SQLite database's file (`PRAGMA quick_check`), or None when
    it can, or when the trouble is not damage (a folder in its place, a lock)."""
    try:
        connection = _sqlite_connect(sqlite_path(database_url), mode="rw")
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(1)")]
        finally:
            connection.close()
    except sqlite3.OperationalError:  # cannot open it, or busy
        return None
    except sqlite3.DatabaseError as exc:  # not a database, malformed
        return str(exc)
    return None if problems == ["ok"] else problems[0]


def replace_damaged_sqlite(database_url: str, info: BackupInfo) -> BackupInfo:
    """Put the backup `info` (checked by `restorable`) in place of a database file SQLite
    cannot read (and so cannot restore into through its backup API)."""
    path = info.path
    database = sqlite_path(database_url)
    incoming = database.with_name(database.name + ".restoring")
    shutil.copyfile(path, incoming)
    old = database.stat()
    os.chmod(incoming, old.st_mode & 0o7777)  # the file keeps its permissions and owner
    with contextlib.suppress(PermissionError):  # only root may give a file to another user
        os.chown(incoming, old.st_uid, old.st_gid)
    fsync(incoming)
    # A write-ahead log or journal left beside the damaged file would be replayed into the
    # restored one: they were kept with the damaged copy, and go.
    for suffix in SIDE_FILES:
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    os.replace(incoming, database)  # atomic: the damaged file or the backup, never half of each
    fsync(database.parent)
    return info


def check_sqlite_pages(path: Path) -> None:
    """Every page, not just the first: a backup damaged past its header must not replace a
    good database."""
    source = _sqlite_connect(path, mode="ro")
    try:
        problems = [row[0] for row in source.execute("PRAGMA quick_check(1)")]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    finally:
        source.close()
    if problems != ["ok"]:
        raise NotABackupError(f"{path} is a damaged SQLite file ({problems[0]}); pick another backup")


# -- restoring ----------------------------------------------------------------------------


def restore_sqlite(
    database_url: str, info: BackupInfo, progress: Progress | None, safety_dir: Path | None
) -> RestoreReport:
    database = sqlite_path(database_url)
    source = _sqlite_connect(info.path, mode="ro")
    safety: list[BackupInfo] = []
    try:
        if safety_dir is not None and source.execute("PRAGMA page_count").fetchone()[0] < 2:
            source = _with_a_free_page(source)
        page_size = source.execute("PRAGMA page_size").fetchone()[0]
        pages = source.execute("PRAGMA page_count").fetchone()[0]
        # Opened before the write lock is taken and closed after it is let go (see
        # backup_sqlite): the safety copy reads the file through it.
        with contextlib.ExitStack() as held:
            data = held.enter_context(open(database, "rb")) if safety_dir is not None else None
            destination = sqlite3.connect(database, timeout=limits.BUSY_TIMEOUT)
            held.callback(destination.close)
            # No step may spill pages into the file before the safety copy is read from it.
            destination.execute(f"PRAGMA cache_size=-{_RESTORE_CACHE_KIB}")
            wal = _is_wal(destination)
            # A short busy timeout per step: the clock in report() decides when to give up.
            destination.execute("PRAGMA busy_timeout=100")
            busy_since: list[float] = []

            def report(status: int, remaining: int, total: int) -> None:
                # Python retries a busy step forever: give up as a writer would.
                if status not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                    busy_since.clear()
                elif not busy_since:
                    busy_since.append(time.monotonic())
                elif time.monotonic() - busy_since[0] > limits.BUSY_TIMEOUT:
                    raise BackupError(
                        f"{database} stayed busy for more than {limits.BUSY_TIMEOUT:g}s: another "
                        "connection keeps a transaction open on it; stop it (or the API) and "
                        "restore again"
                    )
                if status == _SQLITE_OK and data is not None and not safety:
                    # The first step has taken the database's write lock, which the backup
                    # holds until its last step has committed: whatever is committed now is
                    # in this copy, and nothing can be committed until the restore is done.
                    safety.append(write_backup(
                        database_url, safety_dir, None, "before-restore",
                        lambda temporary: copy_still_revision(database, data, wal, temporary),
                        durable=True))
                if progress is not None:
                    progress((total - remaining) * page_size, total * page_size)

            # The online backup API writes through SQLite's own locking and journal: other
            # connections wait for it and then see the restored content; a crash midway leaves
            # the previous content. Its first step takes the write lock (in rollback-journal
            # mode an exclusive one) and each later step keeps it; steps smaller than the whole
            # file make sure there is a first step before the last, for the safety copy.
            step = max(1, min(_RESTORE_STEP // page_size, pages - 1))
            source.backup(destination, pages=step, progress=report, sleep=0.001)
            revision = _sqlite_revision(destination)
            unversioned = revision is None and _has_tables(destination)
    finally:
        source.close()
    return RestoreReport(info, safety[0] if safety else None, revision, unversioned)


def copy_still_revision(
    database: Path, data, wal: bool, path: Path, progress: Progress | None = None
) -> str | None:
    _copy_still(database, data, wal, path, progress)
    copy = _sqlite_connect(path, mode="ro")
    try:
        return _sqlite_revision(copy)
    finally:
        copy.close()


def _with_a_free_page(source: sqlite3.Connection) -> sqlite3.Connection:
    """A copy in memory of a one-page backup (a database without tables), with a free page
    added: a restore needs two steps, so that the safety copy comes between them."""
    padded = sqlite3.connect(":memory:", isolation_level=None)
    source.backup(padded)
    source.close()
    if padded.execute("PRAGMA auto_vacuum").fetchone()[0] == 1:
        padded.execute("PRAGMA auto_vacuum=INCREMENTAL")  # FULL would give the page back
    padded.execute("CREATE TABLE orchestrator_padding (id INTEGER)")
    padded.execute("DROP TABLE orchestrator_padding")
    return padded


def _has_tables(connection: sqlite3.Connection) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' "
        "ESCAPE '~' AND name NOT IN ('alembic_version', 'migration_history')"
    ).fetchone()
    return row is not None


def _sqlite_connect(path: Path, mode: str) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=limits.BUSY_TIMEOUT, isolation_level=None)
