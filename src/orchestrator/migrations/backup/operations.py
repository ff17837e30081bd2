"""The public operations, each of which picks its dialect's module: back up (`create`,
`create_held`), say what a file is (`inspect_backup`), check that it may be restored into a
database (`restorable`), and restore it (`restore`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from orchestrator.db import backend_name, sqlite_path
from orchestrator.migrations.backup import postgres, sqlite
from orchestrator.migrations.backup.files import write_backup
from orchestrator.migrations.backup.identity import database_identity, same_database
from orchestrator.migrations.backup.info import (
    KINDS,
    PGDUMP_MAGIC,
    SQLITE_MAGIC,
    BackupInfo,
    Notify,
    Progress,
    RestoreReport,
)
from orchestrator.migrations.backup.pgtools import tool
from orchestrator.migrations.backup.sidecar import read_sidecar
from orchestrator.migrations.errors import (
    BackupError,
    NotABackupError,
    OtherDatabaseError,
)

_DATABASES = {"sqlite": "a SQLite database", "postgresql": "a PostgreSQL database"}


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
    database = sqlite_path(database_url)  # None for PostgreSQL
    if damaged:
        copy = lambda temporary: sqlite.keep_damaged_sqlite(database, temporary)  # noqa: E731
    elif dialect == "sqlite":
        copy = lambda temporary: sqlite.backup_sqlite(database, temporary, progress)  # noqa: E731
    else:
        copy = lambda temporary: postgres.backup_postgres(  # noqa: E731
            database_url, temporary, progress)
    return write_backup(database_url, backup_dir, output, reason, copy, unknown=damaged)


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
    return write_backup(
        database_url, backup_dir, None, reason,
        lambda temporary: sqlite.copy_still_revision(database, data, wal, temporary, progress))


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
    sidecar = read_sidecar(path)
    if sidecar is None:
        stat = path.stat()
        created = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
        return BackupInfo(path, dialect, None, None, created, "unknown", stat.st_size)
    if sidecar.dialect != dialect:
        raise NotABackupError(
            f"{path} is {KINDS[dialect]} but its sidecar {sidecar.sidecar.name} describes "
            f"{KINDS[sidecar.dialect]}; the pair was mixed up"
        )
    return sidecar


def restorable(database_url: str, path: Path, *, other_database: bool = False) -> BackupInfo:
    """The backup at `path`, if it is a backup of this kind of database; refuses it otherwise.

    A backup whose sidecar names another database is refused unless `other_database`.
    """
    info = inspect_backup(path)
    dialect = backend_name(database_url)
    if dialect == "postgresql":
        tool("pg_restore")  # before the safety backup, not after it
    if info.dialect != dialect:
        raise NotABackupError(
            f"{path} is {KINDS[info.dialect]}, not a backup of {_DATABASES[dialect]}; "
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
        sqlite.check_sqlite_pages(path)
    else:
        postgres.check_archive_data(database_url, path)
    return info


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
    can commit from the start of that backup until the restore is done (see the package's
    docstring). `spare`: PostgreSQL sessions of this process not to end (the migration lock's).
    """
    info = checked or restorable(database_url, path, other_database=True)
    if info.dialect == "sqlite":
        return sqlite.restore_sqlite(database_url, info, progress, safety_dir)
    return postgres.restore_postgres_safely(database_url, info, progress, safety_dir, notify,
                                            spare)
