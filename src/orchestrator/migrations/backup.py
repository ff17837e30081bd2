"""Backups and restores of the database, per dialect.

SQLite: a byte copy of the file taken while a read transaction holds it still (see
`_backup_sqlite`), restored through SQLite's online backup API. PostgreSQL: `pg_dump
--format=custom` at a snapshot exported by our own transaction; restored in one transaction of
ours, which drops the tables, views, sequences and types created since the backup and then runs
the SQL `pg_restore --clean --if-exists` writes out (`--clean` only drops what the archive has;
functions and triggers created since are left alone).

A restore first backs up the state it replaces, and from the start of that safety backup until
the restored database is in place no other connection can commit: on SQLite the restore holds
the database's write lock throughout (`_restore_sqlite`); on PostgreSQL one session of ours
locks every table against writers, the safety dump is taken at its snapshot and the restore
runs in its transaction (`_Window`). A writer waits, then writes into the restored database, or
is refused with an error: it never commits into a state that is about to be replaced.

A backup is written under a temporary name and renamed once complete; a backup killed midway
leaves only that temporary file, which the next backup into the same folder deletes. Every
backup has a sidecar `<file>.json` recording the database it came from (never its password), the
revision it was taken at, when and why. Backups the tool named itself are kept newest first, up to
`keep` per database; files named with `--output` are never deleted. Nothing here prints: long
copies report progress, and waits for other sessions are announced, through callbacks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

from orchestrator.db import backend_name, is_secret_parameter, mask_url, sqlite_path
from orchestrator.migrations import version
from orchestrator.migrations.errors import (
    BackupError,
    BackupToolMissing,
    NotABackupError,
    OtherDatabaseError,
    first_line,
)

# Progress callback: (bytes done, bytes in total or None when unknown).
Progress = Callable[[int, "int | None"], None]
# Told, in one line, what a restore waits for or ends (other sessions, a busy database).
Notify = Callable[[str], None]

SIDECAR_FORMAT = "orchestrator-backup"
SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
_EXTENSIONS = {"sqlite": ".sqlite", "postgresql": ".dump"}
_KINDS = {"sqlite": "a SQLite database", "postgresql": "a PostgreSQL pg_dump archive"}
_DATABASES = {"sqlite": "a SQLite database", "postgresql": "a PostgreSQL database"}
_CHUNK = 64 * 1024 * 1024
# Bytes a SQLite restore copies per step, and the cache that holds them (see _restore_sqlite).
_RESTORE_STEP = 1024 * 1024
_RESTORE_CACHE_KIB = 4 * _RESTORE_STEP // 1024
_POLL_SECONDS = 0.1
# Seconds a backup or restore waits for a writer to finish its transaction.
_BUSY_TIMEOUT = 30.0
_SQLITE_OK, _SQLITE_BUSY, _SQLITE_LOCKED = 0, 5, 6  # result codes of a backup step
_SIDE_FILES = ("-wal", "-journal", "-shm")  # what SQLite keeps beside a database file
# A backup being written: hidden, and locked (flock) by the process writing it.
_PARTIAL = ".partial"
# The names the tool gives: <database>-<UTC time>-<revision>-<reason>.<extension>.
_AUTOMATIC_NAME = re.compile(r"-\d{8}T\d{12}Z-[^-]+-[a-z-]+\.(?:sqlite|dump)$")
_CLIENT_PACKAGE = (
    "install the PostgreSQL client tools, matching the server's major version: "
    "`apt-get install postgresql-client` (Debian/Ubuntu; the package `postgresql-client`)"
)


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


def database_identity(database_url: str) -> str:
    """The database a URL points at, without password or options: backups are grouped by it."""
    path = sqlite_path(database_url)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    return _without_secrets(make_url(database_url), query=False)


def same_database(identity: str, other: str) -> bool:
    """Whether two identities name one database (for PostgreSQL: whoever connects to it)."""
    if identity == other:
        return True
    try:
        first, second = make_url(identity), make_url(other)
    except Exception:  # noqa: BLE001 - a sidecar edited by hand: not the same
        return False
    if backend_name(first) != "postgresql" or backend_name(second) != "postgresql":
        return False
    return (first.host or "", first.port or 5432, first.database) == (
        second.host or "", second.port or 5432, second.database)


# -- backing up ---------------------------------------------------------------------------


def create(
    database_url: str,
    *,
    backup_dir: Path,
    output: Path | None = None,
    reason: str = "manual",
    progress: Progress | None = None,
    damaged: bool = False,
) -> BackupInfo:
    """Back up the database to `output`, or to a new file in `backup_dir`.

    `damaged`: a SQLite file SQLite cannot read, kept byte for byte.
    """
    dialect = backend_name(database_url)
    if damaged:
        copy = lambda temporary: _keep_damaged_sqlite(sqlite_path(database_url), temporary)  # noqa: E731
    elif dialect == "sqlite":
        copy = lambda temporary: _backup_sqlite(sqlite_path(database_url), temporary, progress)  # noqa: E731
    else:
        copy = lambda temporary: _backup_postgres(database_url, temporary, progress)  # noqa: E731
    return _write_backup(database_url, backup_dir, output, reason, copy, unknown=damaged)


def create_held(
    database_url: str,
    data,
    wal: bool,
    *,
    backup_dir: Path,
    reason: str,
    progress: Progress | None = None,
) -> BackupInfo:
    """Back up a SQLite database whose write lock this process holds (the transaction a
    migration runs in), reading the file through `data`, a descriptor of it opened before the
    lock was taken; `wal`: the database is in WAL mode."""
    database = sqlite_path(database_url)
    return _write_backup(
        database_url, backup_dir, None, reason,
        lambda temporary: _copy_still_revision(database, data, wal, temporary, progress))


def _write_backup(
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
                _fsync(temporary)
            _move(temporary, path)
        if durable:
            _fsync(folder)
    except OSError as exc:  # a read-only folder, a full disk
        raise BackupError(
            f"cannot write the backup {exc.filename or folder}: {exc.strerror}; {hint}"
        ) from None
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
    _write_sidecar(info)
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
            for leftover in (temporary, *_side_files(temporary)):
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
            for leftover in (partial, *_side_files(partial)):
                leftover.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def _side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in _SIDE_FILES[:2]]


def _move(temporary: Path, path: Path) -> None:
    if path.exists():  # an --output made meanwhile is never overwritten
        raise BackupError(f"{path} already exists; choose another --output or delete it first")
    for side, final in zip(_side_files(temporary), _side_files(path), strict=True):
        if side.exists():
            os.replace(side, final)
    os.replace(temporary, path)


def _check_complete(database_url: str, path: Path) -> None:
    """A copy that ended early is not a backup: a SQLite file as long as its header says, a
    pg_dump archive whose table of contents pg_restore can read."""
    if backend_name(database_url) == "postgresql":
        _archive_listing(database_url, path)
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


def _backup_sqlite(source: Path, path: Path, progress: Progress | None) -> str | None:
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


def _keep_damaged_sqlite(source: Path, path: Path) -> None:
    # With its write-ahead log or journal, if it has one: they may hold its last commits.
    shutil.copyfile(source, path)
    for side, copy in zip(_side_files(source), _side_files(path), strict=True):
        if side.exists():
            shutil.copyfile(side, copy)
    return None


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
    _fsync(incoming)
    # A write-ahead log or journal left beside the damaged file would be replayed into the
    # restored one: they were kept with the damaged copy, and go.
    for suffix in _SIDE_FILES:
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    os.replace(incoming, database)  # atomic: the damaged file or the backup, never half of each
    _fsync(database.parent)
    return info


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sqlite_revision(connection: sqlite3.Connection) -> str | None:
    return version.read_revision(version.dbapi_rows(connection), "sqlite")


def _copy_file(data, path: Path, progress: Progress | None) -> None:
    # sendfile copies inside the kernel, as fast as `cp`. Like `cp`, the copy is not fsynced
    # (except before a restore, see _write_backup): it guards against a migration that fails,
    # and the database file keeps its own journal.
    size = os.fstat(data.fileno()).st_size
    with open(path, "r+b") as out:
        done = 0
        while done < size:
            sent = os.sendfile(out.fileno(), data.fileno(), done, min(_CHUNK, size - done))
            if sent == 0:  # the file ended early (cut by hand?): _check_complete says so
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


def _backup_postgres(database_url: str, path: Path, progress: Progress | None) -> str | None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    pg_dump = _tool("pg_dump")
    engine = _engine(database_url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            # pg_dump adopts this transaction's snapshot, so the dump and the revision read
            # here are the same state of the database, whatever runs meanwhile.
            snapshot = connection.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            revision = version.read_revision(version.sqlalchemy_rows(connection), "postgresql")
            with _libpq(database_url) as (conninfo, env):
                command = [pg_dump, "--format=custom", "--no-password", f"--snapshot={snapshot}",
                           f"--file={path}", f"--dbname={conninfo}"]
                _run_tool(command, env, database_url,
                          poll=lambda: progress(_size(path), None) if progress else None)
    except DBAPIError as exc:
        raise BackupError(
            f"cannot back up {mask_url(database_url)}: {first_line(exc)}; "
            "check DATABASE_URL and that the server is running"
        ) from None
    finally:
        engine.dispose()
    return revision


# -- restoring ----------------------------------------------------------------------------


def inspect_backup(path: Path) -> BackupInfo:
    """What a file is, from its first bytes and its sidecar; refuses files that are not backups."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise BackupError(
            f"{path} does not exist; list backups with `orchestrator db backups`"
        ) from None
    except IsADirectoryError:
        raise NotABackupError(f"{path} is a folder, not a backup file") from None
    if magic == SQLITE_MAGIC:
        dialect = "sqlite"
    elif magic.startswith(PGDUMP_MAGIC):
        dialect = "postgresql"
    else:
        raise NotABackupError(
            f"{path} is neither a SQLite database nor a pg_dump custom-format archive; "
            "give a file made by `orchestrator db backup` (see `orchestrator db backups`)"
        )
    sidecar = _read_sidecar(path)
    if sidecar is None:
        stat = path.stat()
        created = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
        return BackupInfo(path, dialect, None, None, created, "unknown", stat.st_size)
    if sidecar.dialect != dialect:
        raise NotABackupError(
            f"{path} is {_KINDS[dialect]} but its sidecar {sidecar.sidecar.name} describes "
            f"{_KINDS[sidecar.dialect]}; the pair was mixed up"
        )
    return sidecar


def restorable(database_url: str, path: Path, *, other_database: bool = False) -> BackupInfo:
    """The backup at `path`, if it is a backup of this kind of database; refuses it otherwise.

    A backup whose sidecar names another database is refused unless `other_database`.
    """
    info = inspect_backup(path)
    dialect = backend_name(database_url)
    if dialect == "postgresql":
        _tool("pg_restore")  # before the safety backup, not after it
    if info.dialect != dialect:
        raise NotABackupError(
            f"{path} is {_KINDS[info.dialect]}, not a backup of {_DATABASES[dialect]}; "
            f"restore it into a {info.dialect} database, or pick another file "
            "(`orchestrator db backups`)"
        )
    database = sqlite_path(database_url)
    if database is not None and database.exists() and path.resolve() == database.resolve():
        raise NotABackupError(
            f"{path} is the database itself; pick a backup from `orchestrator db backups`"
        )
    target = database_identity(database_url)
    if info.database is not None and not other_database and not same_database(info.database,
                                                                                target):
        raise OtherDatabaseError(
            f"{path} is a backup of {info.database}, not of {target}; pick a backup of this "
            "database (`orchestrator db backups`), or pass --other-database to replace this "
            "database's content with the other one's"
        )
    if dialect == "sqlite":
        _check_sqlite_pages(path)
    else:
        _check_archive_data(database_url, path)
    return info


def _check_sqlite_pages(path: Path) -> None:
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


def _check_archive_data(database_url: str, path: Path) -> None:
    """Every data block, not just the table of contents (`--list` reads only that): an archive
    cut short must be refused before the restore ends sessions and takes its safety dump. It
    reads the whole archive, with no connection and so no secret (0.8 s for 1,000,000 tasks)."""
    command = [_tool("pg_restore"), f"--file={os.devnull}", str(path)]
    try:
        _run_tool(command, None, database_url)
    except BackupError as exc:
        raise NotABackupError(f"{exc}; pick another backup") from None


def _archive_listing(database_url: str, path: Path) -> str:
    """The archive's table of contents (a restore has read the whole archive first, so a
    failure here is pg_restore's own one-line BackupError)."""
    command = [_tool("pg_restore"), "--list", str(path)]
    with _libpq(database_url) as (_, env):
        return _run_tool(command, env, database_url, capture=True)


def restore(
    database_url: str,
    path: Path,
    *,
    progress: Progress | None = None,
    checked: BackupInfo | None = None,
    safety_dir: Path | None = None,
    notify: Notify | None = None,
    spare: Iterable[int] = (),
) -> RestoreReport:
    """Replace the database's whole content with the backup at `path` (`checked`: what
    `restorable` already said of it, so its pages or archive are not read twice).

    With `safety_dir`, the state it replaces is backed up there first, and no other connection
    can commit from the start of that backup until the restore is done (see the module's
    docstring). `spare`: PostgreSQL sessions of this process not to end (the migration lock's).
    """
    info = checked or restorable(database_url, path, other_database=True)
    if info.dialect == "sqlite":
        return _restore_sqlite(database_url, info, progress, safety_dir)
    return _restore_postgres_safely(database_url, info, progress, safety_dir, notify, spare)


def _restore_sqlite(
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
        # _backup_sqlite): the safety copy reads the file through it.
        with contextlib.ExitStack() as held:
            data = held.enter_context(open(database, "rb")) if safety_dir is not None else None
            destination = sqlite3.connect(database, timeout=_BUSY_TIMEOUT)
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
                elif time.monotonic() - busy_since[0] > _BUSY_TIMEOUT:
                    raise BackupError(
                        f"{database} stayed busy for more than {_BUSY_TIMEOUT:g}s: another "
                        "connection keeps a transaction open on it; stop it (or the API) and "
                        "restore again"
                    )
                if status == _SQLITE_OK and data is not None and not safety:
                    # The first step has taken the database's write lock, which the backup
                    # holds until its last step has committed: whatever is committed now is
                    # in this copy, and nothing can be committed until the restore is done.
                    safety.append(_write_backup(
                        database_url, safety_dir, None, "before-restore",
                        lambda temporary: _copy_still_revision(database, data, wal, temporary),
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


def _copy_still_revision(
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


_TOC_ENTRY = re.compile(
    r"^\d+; \d+ \d+ (?P<kind>MATERIALIZED VIEW|FOREIGN TABLE|TABLE|VIEW|SEQUENCE|TYPE|DOMAIN) "
    r"(?P<schema>\S+) (?P<name>\S+) \S*$"
)
# Functions are listed with their arguments, which may hold spaces: "add(integer, integer)".
_TOC_ROUTINE = re.compile(
    r"^\d+; \d+ \d+ (?:FUNCTION|PROCEDURE|AGGREGATE) (?P<schema>\S+) (?P<name>[^\s(]+)\("
)


def load_into_empty(database_url: str, path: Path) -> None:
    """Restore a pg_dump archive into a new, empty database (a rehearsal's copy): nothing to
    clean first, and neither owners nor grants, since the copy belongs to whoever made it."""
    pg_restore = _tool("pg_restore")
    with _libpq(database_url) as (conninfo, env):
        _run_tool([pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
                   "--no-password", f"--dbname={conninfo}", str(path)], env, database_url)


# Tables, views, sequences, types and routines in user schemas, except those that belong to an
# extension or live and die with a column (serial and identity sequences); with the name to
# drop each by (a routine's includes its arguments). An overload of a routine whose name the
# archive has is kept: archives list routines by name and arguments in a form not worth parsing.
# Schemas of the database's own objects (nor the catalogs, nor pg_toast and pg_temp_N).
_USER_SCHEMA = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
)
_USER_OBJECTS = f"""
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
       WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype IN ('e', 'a', 'i'))
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname,
       quote_ident(n.nspname) || '.' || quote_ident(t.typname)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd', 'r') AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
       n.nspname, p.proname,
       quote_ident(n.nspname) || '.' || quote_ident(p.proname)
       || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p', 'a') AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1 DESC
"""


def _restore_postgres_safely(
    database_url: str,
    info: BackupInfo,
    progress: Progress | None,
    safety_dir: Path | None,
    notify: Notify | None,
    spare: Iterable[int],
) -> RestoreReport:
    """The restore runs in one transaction of one session of ours, which first locks every
    table of the database: see `_Window`."""
    tell = notify or (lambda _message: None)
    safety = None
    with _Window(database_url, tell, spare) as window:
        # A failure the watcher caused (it cancelled our statements) is told as the watcher
        # saw it, not as the cancelled statement's error.
        try:
            window.lock()
            if safety_dir is not None:
                safety = _write_backup(database_url, safety_dir, None, "before-restore",
                                       window.dump, durable=True)
        except BackupError as exc:
            raise (window.failure or exc) from None
        try:
            window.restore(info.path, progress)
        except BaseException as exc:
            raise window.not_restored(window.failure or exc, safety) from None
    revision, unversioned = _postgres_revision(database_url)
    return RestoreReport(info, safety, revision, unversioned)


def _postgres_revision(database_url: str) -> tuple[str | None, bool]:
    """(the revision, whether it has tables but none) of a PostgreSQL database."""
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            tables = version.table_names(connection, "postgresql")
            revision = version.read_revision(version.sqlalchemy_rows(connection), "postgresql")
    finally:
        engine.dispose()
    return revision, revision is None and bool(tables - version.BOOKKEEPING_TABLES)


# -- the exclusive window on PostgreSQL ---------------------------------------------------
#
# Why one session that locks every table, and not a setting that keeps other sessions out:
# - `ALTER DATABASE … SET default_transaction_read_only = on` is a default: a session that says
#   `SET default_transaction_read_only = off`, `BEGIN READ WRITE` or `SET SESSION
#   CHARACTERISTICS AS TRANSACTION READ WRITE` still commits (an operator's trial lost writes so);
# - `ALLOW_CONNECTIONS false` keeps everyone out, superusers and our own pg_dump included, and
#   if the tool is killed it stays so; `CONNECTION LIMIT` and `REVOKE CONNECT` bind neither the
#   owner nor a superuser.
# A SHARE lock on a table lets others read it and nobody else write it, whatever their
# settings; pg_dump's ACCESS SHARE locks go with it. The lock is taken before the transaction's
# snapshot (LOCK does not take one), so the safety dump, made at that snapshot, holds every
# commit made before, and none can be made after until the restore, run in the same
# transaction, commits. Writers wait meanwhile (or are ended, getting an error), then write into
# the restored database. Nothing outlives the session: if the tool is killed, the transaction
# is rolled back and the database is as it was.

# Our sessions write even in a database whose new sessions are read-only by default.
_READ_WRITE = "-c default_transaction_read_only=off"
# Client sessions of the database other than ours. A role sees little of another role's
# sessions (no type without pg_read_all_stats): those are taken as clients; background workers
# (autovacuum) have no user.
_OTHER_SESSIONS = """
SELECT pid, coalesce(nullif(application_name, ''), usename) FROM pg_stat_activity
WHERE datname = current_database() AND application_name IS DISTINCT FROM %(tag)s
  AND pid <> ALL(%(spare)s) AND usename IS NOT NULL
  AND coalesce(backend_type, 'client backend') = 'client backend'
ORDER BY pid
"""
# Sessions in the way of one of ours: holding a lock one of ours waits for, or waiting for
# one ahead of it.
_BLOCKERS = """
SELECT DISTINCT b.pid, coalesce(nullif(b.application_name, ''), b.usename, 'a session')
FROM pg_stat_activity a CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
WHERE a.datname = current_database() AND a.application_name = %(tag)s
  AND b.application_name IS DISTINCT FROM %(tag)s AND b.pid <> ALL(%(spare)s)
ORDER BY 1
"""
# The tables to lock: every table of the user schemas (a partitioned table locks its
# partitions).
_USER_TABLES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER_SCHEMA}
ORDER BY 1
"""
# psql meta-commands pg_restore writes around a plain script (15.14 and later): a guard for
# psql, nothing to run.
_GUARD_COMMANDS = (b"\\restrict ", b"\\unrestrict ")
# Bytes of COPY data sent to the server at once.
_COPY_CHUNK = 1024 * 1024


class _Window:
    """One session of ours that locks every table of the database (SHARE: others read, nobody
    else writes), exports its snapshot for the safety dump, and restores the backup in the same
    transaction. Sessions present at the start are ended, saying so; meanwhile a watcher (its
    own session) ends any session in the way of ours, or, where this role may not end it,
    waits for it up to the busy timeout and then stops the restore."""

    def __init__(self, database_url: str, notify: Notify, spare: Iterable[int]) -> None:
        self.database_url = database_url
        self.notify = notify
        self.spare = list(spare)
        # Every session of ours has this name, pg_dump's included: an operator looking at
        # pg_stat_activity knows who holds the window.
        self.tag = f"orchestrator-restore {socket.gethostname()} pid {os.getpid()}"
        self.snapshot: str | None = None
        self.failure: BackupError | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> _Window:
        import psycopg

        self._tools = contextlib.ExitStack()
        self._conninfo, self._env = self._tools.enter_context(_libpq(self.database_url))
        self._env["PGAPPNAME"] = self.tag
        # Our own sessions take the secrets as arguments (libpq reads the environment of this
        # process, not the one made for the tools); the connection string has none.
        url = make_url(self.database_url)
        conninfo = _without_secrets(url, query=True)
        secret = {key: value if isinstance(value, str) else value[-1]
                  for key, value in url.query.items() if is_secret_parameter(key)}
        if url.password is not None:
            secret["password"] = url.password
        try:
            self.session = psycopg.connect(conninfo, autocommit=True, connect_timeout=10,
                                           options=_READ_WRITE, application_name=self.tag,
                                           **secret)
            self.watch = psycopg.connect(conninfo, autocommit=True, connect_timeout=10,
                                         application_name=self.tag, **secret)
        except psycopg.Error as exc:
            self.__exit__(None, None, None)
            raise BackupError(
                f"cannot restore {mask_url(self.database_url)}: {first_line(exc)}; check "
                "DATABASE_URL and that the server is running"
            ) from None
        self._watcher = threading.Thread(target=self._watch, name="restore-watcher", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        for name in ("session", "watch"):
            connection = getattr(self, name, None)
            if connection is not None:
                connection.close()  # an open transaction is rolled back
        self._tools.close()

    # -- the lock ---------------------------------------------------------------------------

    def lock(self) -> None:
        """End the other sessions, then lock every table and take the snapshot."""
        import psycopg

        try:
            self._end_others()
            while True:
                tables = [row[0] for row in self.session.execute(_USER_TABLES)]
                self.session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                if tables:
                    self.session.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE")
                # The snapshot is taken here, after the locks: a table made meanwhile, which
                # no lock holds, shows now; lock it too.
                if [row[0] for row in self.session.execute(_USER_TABLES)] == tables:
                    break
                self.session.execute("ROLLBACK")
            self.snapshot = self.session.execute("SELECT pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            raise BackupError(
                f"cannot restore {mask_url(self.database_url)}: locking its tables for the "
                f"restore's duration failed ({first_line(exc)}); restore as the database's "
                "owner or a superuser, with the server running"
            ) from None

    def _end_others(self) -> None:
        found = self.watch.execute(_OTHER_SESSIONS, {"tag": self.tag, "spare": self.spare})
        found = [tuple(row) for row in found]
        if not found:
            return
        self.notify(f"ending {len(found)} other session{'s' * (len(found) != 1)} of the "
                    f"database ({_describe(found)}); they cannot write until the restore is "
                    "done")
        for pid, _who in found:
            self._terminate(pid)

    def _terminate(self, pid: int) -> bool:
        import psycopg

        try:
            self.watch.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.Error:  # another role's session, which this one may not end
            return False
        return True

    def _watch(self) -> None:
        """End whatever is in the way of our sessions; give up on what cannot be ended."""
        import psycopg

        refused: dict[int, float] = {}
        while not self._stop.wait(_POLL_SECONDS):
            try:
                blockers = [tuple(row) for row in self.watch.execute(
                    _BLOCKERS, {"tag": self.tag, "spare": self.spare})]
            except psycopg.Error:  # pragma: no cover - the watcher's session was cut
                return
            waiting = [(pid, who) for pid, who in blockers
                       if pid in refused or not self._terminate(pid)]
            for pid, who in waiting:
                if pid not in refused:
                    refused[pid] = time.monotonic()
                    self.notify(f"waiting for {who} pid {pid}, which holds a lock the restore "
                                f"needs (this role may not end it; up to {_BUSY_TIMEOUT:g}s)")
            if any(time.monotonic() - refused[pid] > _BUSY_TIMEOUT for pid, _ in waiting):
                self.failure = BackupError(
                    f"{_describe(waiting)} held a lock the restore needs for more than "
                    f"{_BUSY_TIMEOUT:g}s (another role's session, which this one may not end);"
                    " stop it (or the API), or restore as a superuser, then restore again"
                )
                # Our statements (and pg_dump's) are cancelled: the transaction rolls back.
                self.watch.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %(tag)s AND pid <> pg_backend_pid()",
                    {"tag": self.tag})
                return

    # -- the safety dump and the restore ------------------------------------------------------

    def dump(self, path: Path) -> str | None:
        """The safety backup: pg_dump at the window's snapshot. Returns its revision."""
        revision = version.read_revision(version.dbapi_rows(self.session), "postgresql")
        command = [_tool("pg_dump"), "--format=custom", "--no-password",
                   f"--snapshot={self.snapshot}", f"--file={path}", f"--dbname={self._conninfo}"]
        _run_tool(command, self._env, self.database_url)
        return revision

    def restore(self, path: Path, progress: Progress | None) -> None:
        """Drop what was made after the backup, run the archive as pg_restore writes it out,
        and commit: all in the window's one transaction."""
        import psycopg

        in_archive = {
            (match["schema"], match["name"])
            for line in _archive_listing(self.database_url, path).splitlines()
            if (match := _TOC_ENTRY.match(line) or _TOC_ROUTINE.match(line))
        }
        try:
            for kind, schema, name, qualified in self.session.execute(_USER_OBJECTS).fetchall():
                if (schema, name) not in in_archive:
                    self.session.execute(f"DROP {kind} IF EXISTS {qualified} CASCADE")
            self._run_archive(path, progress)
            self.session.execute("COMMIT")
        except psycopg.Error as exc:
            raise BackupError(
                f"the restore failed for {mask_url(self.database_url)}: "
                f"{_first_error(str(exc), self.database_url)}"
            ) from None

    def _run_archive(self, path: Path, progress: Progress | None) -> None:
        """pg_restore writes the archive out as SQL (no connection of its own); each statement
        runs here, and each table's COPY data goes to the server as it comes."""
        total = path.stat().st_size
        with open(path, "rb") as archive, tempfile.TemporaryFile() as errors:
            # It only reads the archive and writes SQL: no connection, no secret.
            process = subprocess.Popen(
                [_tool("pg_restore"), "--clean", "--if-exists", "--file=-"],
                stdin=archive, stdout=subprocess.PIPE, stderr=errors)
            try:
                self._run_script(process.stdout, lambda: progress(
                    os.lseek(archive.fileno(), 0, os.SEEK_CUR), total) if progress else None)
            except BaseException:  # we stopped reading: it has to go
                process.kill()
                raise
            finally:
                process.wait()
                process.stdout.close()
            if process.returncode != 0:
                errors.seek(0)
                reason = _first_error(errors.read().decode(errors="replace"), self.database_url)
                raise BackupError(f"pg_restore failed for {mask_url(self.database_url)}: {reason}")

    def _run_script(self, script, poll: Callable[[], object]) -> None:
        """Run a plain pg_restore script: its statements in batches (each batch one query),
        each COPY's data streamed to the server in chunks as it is read."""
        statements: list[bytes] = []
        copying = None  # the open COPY, while its data lines come
        data = bytearray()
        polled = 0.0  # the first line is reported: pg_restore is running then

        def run_statements() -> None:
            # ";" ends the last statement; alone (nothing was pending) it is an empty query.
            self.session.execute(b"".join(statements).decode() + ";")
            statements.clear()

        with contextlib.ExitStack() as stack:
            for line in script:
                if copying is not None:
                    if line != b"\\.\n":
                        data += line
                        if len(data) >= _COPY_CHUNK:
                            copying.write(bytes(data))
                            data.clear()
                        continue
                    copying.write(bytes(data))
                    data.clear()
                    stack.close()  # the COPY ends
                    copying = None
                elif line.startswith(_GUARD_COMMANDS):
                    continue
                elif line.startswith(b"COPY ") and line.rstrip().endswith(b" FROM stdin;"):
                    run_statements()
                    cursor = stack.enter_context(self.session.cursor())
                    copying = stack.enter_context(cursor.copy(line.rstrip()[:-1].decode()))
                else:
                    statements.append(line)
                if time.monotonic() - polled > _POLL_SECONDS:
                    poll()
                    polled = time.monotonic()
        run_statements()
        poll()

    def not_restored(self, failure: BaseException, safety: BackupInfo | None) -> BaseException:
        """What to raise when the restore failed or was stopped: its transaction was rolled
        back, so the database is as it was."""
        kept = f" (its state before the restore is also in {safety.path})" if safety else ""
        done = f"nothing was restored: the database is as it was{kept}"
        if isinstance(failure, BackupError):
            return type(failure)(f"{failure}; {done}")
        # Ctrl-C (or a bug): raised again as it is, once what it did is told.
        self.notify(f"the restore was stopped ({type(failure).__name__}); {done}")
        return failure


def read_only_setting(connection) -> str | None:
    """The database's own `default_transaction_read_only=...` setting, if it has one."""
    from sqlalchemy import text

    return connection.execute(text(_READ_ONLY_SETTING)).scalar()


def read_only_by_default(setting: str | None) -> bool:
    """Whether a `default_transaction_read_only=...` setting makes sessions read-only."""
    value = (setting or "").partition("=")[2].strip().strip("'\"").lower()
    return value in ("on", "true", "yes", "1", "t", "y")


def make_writable(quoted_name: str) -> str:
    """What an owner runs to make a database's new sessions writable again (it works from a
    read-only session too)."""
    return (f"BEGIN READ WRITE; ALTER DATABASE {quoted_name} RESET "
            "default_transaction_read_only; COMMIT")


_READ_ONLY_SETTING = """
SELECT s.setting FROM pg_db_role_setting r
JOIN pg_database d ON d.oid = r.setdatabase AND d.datname = current_database()
CROSS JOIN unnest(r.setconfig) s(setting)
WHERE r.setrole = 0 AND s.setting LIKE 'default\\_transaction\\_read\\_only=%'
"""


def _describe(sessions: list[tuple[int, str]]) -> str:
    shown = ", ".join(f"{who} pid {pid}" for pid, who in sessions[:5])
    return shown + (f" and {len(sessions) - 5} more" if len(sessions) > 5 else "")


# -- listing and retention ----------------------------------------------------------------


def list_backups(database_url: str, backup_dir: Path) -> list[BackupInfo]:
    """This database's backups in `backup_dir`, newest first."""
    identity = database_identity(database_url)
    found = []
    for sidecar in backup_dir.glob("*.json") if backup_dir.is_dir() else ():
        info = _read_sidecar(sidecar.with_suffix(""))
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


# -- helpers ------------------------------------------------------------------------------


def _write_sidecar(info: BackupInfo) -> None:
    from orchestrator import __version__

    document = {"format": SIDECAR_FORMAT, "tool_version": __version__, **info.as_dict()}
    document["path"] = info.path.name
    temporary = info.sidecar.with_name(info.sidecar.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    # Written last and renamed into place: a backup without its sidecar is an unfinished one.
    temporary.replace(info.sidecar)


def _read_sidecar(path: Path) -> BackupInfo | None:
    try:
        document = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        return None
    if document.get("dialect") not in _KINDS:
        return None
    try:
        return BackupInfo(
            path=path,
            dialect=document["dialect"],
            database=document["database"],
            revision=document["revision"],
            created_at=dt.datetime.fromisoformat(document["created_at"]),
            reason=document["reason"],
            size=int(document["size"]),
            # Sidecars written before the field existed: the tool's names have one shape.
            automatic_name=bool(document.get("automatic_name",
                                             _AUTOMATIC_NAME.search(path.name) is not None)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _sqlite_connect(path: Path, mode: str) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT, isolation_level=None)


def _engine(database_url: str):
    from sqlalchemy.pool import NullPool

    from orchestrator.db import create_engine

    from sqlalchemy import event

    from orchestrator.migrations.lock import protect_new_session

    # Our sessions write during a restore, while other new sessions are read-only by default.
    connect_args = {"connect_timeout": 10, "options": _READ_WRITE}
    engine = create_engine(database_url, poolclass=NullPool, connect_args=connect_args)
    # A backup's snapshot is held by a transaction that sits idle while pg_dump runs: a
    # managed server's idle timeouts must not end it.
    event.listen(engine, "connect", protect_new_session)
    return engine


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupToolMissing(f"{name} is not installed (or not on PATH); {_CLIENT_PACKAGE}")
    return path


@contextlib.contextmanager
def _libpq(database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A libpq connection string without any secret, and the environment that carries them:
    the password in PGPASSWORD; other secret options (`sslpassword`) in a service file readable
    by us only, deleted afterwards. Never the command line, which `ps` shows to everyone.

    The environment also lets the tools write while a restore makes new sessions read-only.
    """
    url = make_url(database_url)
    env = dict(os.environ)
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {_READ_WRITE}".strip()
    password = url.password if url.password is not None else url.query.get("password")
    if password is not None:
        env["PGPASSWORD"] = str(password if isinstance(password, str) else password[-1])
    secrets = {key: value for key, value in url.query.items()
               if key != "password" and is_secret_parameter(key)}
    conninfo = _without_secrets(url, query=True)
    if not secrets:
        yield conninfo, env
        return
    service = f"orchestrator-{uuid.uuid4().hex[:12]}"
    with tempfile.NamedTemporaryFile("w", prefix="orchestrator-", suffix=".conf") as file:
        os.chmod(file.name, 0o600)
        file.write(f"[{service}]\n")
        for key, value in secrets.items():
            file.write(f"{key}={value if isinstance(value, str) else value[-1]}\n")
        file.flush()
        env["PGSERVICEFILE"] = file.name
        separator = "&" if "?" in conninfo else "?"
        yield f"{conninfo}{separator}service={service}", env


def _without_secrets(url, query: bool) -> str:
    # Built afresh: `URL.set(password=None)` keeps the password (None means "unchanged").
    options = {key: value for key, value in url.query.items() if not is_secret_parameter(key)}
    bare = URL.create("postgresql", url.username, None, url.host, url.port, url.database,
                      options if query else {})
    return bare.render_as_string(hide_password=False)


def _run_tool(
    command: list[str],
    env: dict[str, str] | None,
    database_url: str,
    *,
    stdin: Any = None,
    poll: Callable[[], object] = lambda: None,
    capture: bool = False,
    die_with_us: bool = True,
) -> str:
    """Run pg_dump or pg_restore; a failure becomes a BackupError with a masked message.

    `die_with_us`: the tool is killed if this process is (a dump nobody will finish or name
    is only load on the server); a restore is not, and completes in its one transaction.
    """
    # stderr goes to a file, not a pipe: a chatty tool can never block on a full pipe while we
    # poll it.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=errors,
            preexec_fn=functools.partial(_die_with, os.getpid()) if die_with_us else None,
        )
        try:
            output = process.communicate()[0] if capture else b""
            while process.poll() is None:
                poll()
                time.sleep(_POLL_SECONDS)
            poll()  # the final figure
        except BaseException:  # Ctrl-C, or the progress display failed: the tool stops too
            process.kill()
            process.wait()
            raise
        errors.seek(0)
        message = errors.read().decode(errors="replace")
    if process.returncode != 0:
        raise BackupError(
            f"{Path(command[0]).name} failed for {mask_url(database_url)}: "
            f"{_first_error(message, database_url)}"
        )
    return output.decode()


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: the child gets SIGKILL when the process that started it dies."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _first_error(message: str, database_url: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    url = make_url(database_url)
    secrets = [url.password] if url.password else []
    for key, value in url.query.items():
        if is_secret_parameter(key):
            secrets.extend([value] if isinstance(value, str) else value)
    for secret in filter(None, secrets):
        text = text.replace(str(secret), "***")
    return text or "no error message"


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
