"""Backups and restores of the database, per dialect.

SQLite: a byte copy of the file taken while a read transaction holds it still
(`sqlite.backup_sqlite`), restored through SQLite's online backup API. PostgreSQL: `pg_dump
--format=custom` at a snapshot exported by our own transaction; restored in one transaction of
ours, which drops the tables, views, sequences and types created since the backup and then runs
the SQL `pg_restore --clean --if-exists` writes out (`--clean` only drops what the archive has;
functions and triggers created since are left alone).

A restore first backs up the state it replaces, and from the start of that safety backup until
the restored database is in place no other connection can commit: on SQLite the restore holds
the database's write lock throughout (`sqlite.restore_sqlite`); on PostgreSQL one session of
ours locks every table against writers, the safety dump is taken at its snapshot and the restore
runs in its transaction (`window.Window`). A writer waits, then writes into the restored
database, or is refused with an error: it never commits into a state that is about to be
replaced.

A backup is written under a temporary name and renamed once complete; a backup killed midway
leaves only that temporary file, which the next backup into the same folder deletes. Every
backup has a sidecar `<file>.json` recording the database it came from (never its password), the
revision it was taken at, when and why. Backups the tool named itself are kept newest first, up to
`keep` per database; files named with `--output` are never deleted. Nothing here prints: long
copies report progress, and waits for other sessions are announced, through callbacks.

The modules, from the top down:
- `operations`: the public operations (`create`, `create_held`, `inspect_backup`, `restorable`,
  `restore`), each handing over to its dialect's module;
- `sqlite`: SQLite backups and restores, damaged files;
- `postgres`: PostgreSQL backups and restores through pg_dump and pg_restore;
- `window`: the exclusive restore window on PostgreSQL (`Window` and its SQL);
- `files`: writing a backup file (partial files, completeness, final name, fsync);
- `pgtools`: running pg_dump and pg_restore (discovery, secrets, dying with us, errors);
- `catalog`: listing a database's backups and pruning old ones;
- `sidecar`: the JSON beside each backup;
- `identity`: which database a URL names, without its secrets;
- `info`: `BackupInfo`, `RestoreReport`, the callbacks and the kinds of file;
- `limits`: how long to wait for other sessions, how often to look.
"""

from __future__ import annotations

from orchestrator.migrations.backup.catalog import list_backups, prune
from orchestrator.migrations.backup.files import remove_stale_partials
from orchestrator.migrations.backup.identity import database_identity, same_database
from orchestrator.migrations.backup.info import (
    SQLITE_MAGIC,
    BackupInfo,
    Progress,
    RestoreReport,
    sidecar_path,
)
from orchestrator.migrations.backup.operations import (
    create,
    create_held,
    inspect_backup,
    restorable,
    restore,
)
from orchestrator.migrations.backup.postgres import (
    load_into_empty,
    make_writable,
    read_only_by_default,
    read_only_setting,
)
from orchestrator.migrations.backup.sidecar import SIDECAR_FORMAT
from orchestrator.migrations.backup.sqlite import replace_damaged_sqlite, sqlite_damage

# The errors raised here, where callers and tests have always found them.
from orchestrator.migrations.errors import (
    BackupError,
    BackupToolMissing,
    NotABackupError,
    OtherDatabaseError,
)

__all__ = [
    "SIDECAR_FORMAT",
    "SQLITE_MAGIC",
    "BackupError",
    "BackupInfo",
    "BackupToolMissing",
    "NotABackupError",
    "OtherDatabaseError",
    "Progress",
    "RestoreReport",
    "create",
    "create_held",
    "database_identity",
    "inspect_backup",
    "list_backups",
    "load_into_empty",
    "make_writable",
    "prune",
    "read_only_by_default",
    "read_only_setting",
    "remove_stale_partials",
    "replace_damaged_sqlite",
    "restorable",
    "restore",
    "same_database",
    "sidecar_path",
    "sqlite_damage",
]
