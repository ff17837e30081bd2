"""PostgreSQL backups and restores through pg_dump and pg_restore.

A backup is `pg_dump --format=custom` at a snapshot exported by our own transaction, so the
dump and the revision read beside it are one state of the database. A restore runs in one
transaction of ours inside the exclusive window (`window.Window`), which first backs up the
state it replaces. A backup is checked block by block before it may replace a database. Also
here: loading an archive into an empty database (a rehearsal's copy), and the database's own
`default_transaction_read_only` setting.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine, mask_url
from orchestrator.migrations import version
from orchestrator.migrations.backup.files import write_backup
from orchestrator.migrations.backup.info import (
    BackupInfo,
    Notify,
    Progress,
    RestoreReport,
)
from orchestrator.migrations.backup.pgtools import READ_WRITE, libpq, run_tool, tool
from orchestrator.migrations.errors import BackupError, NotABackupError, first_line
from orchestrator.migrations.lock import protect_new_session

_READ_ONLY_SETTING = """
SELECT s.setting FROM pg_db_role_setting r
JOIN pg_database d ON d.oid = r.setdatabase AND d.datname = current_database()
CROSS JOIN unnest(r.setconfig) s(setting)
WHERE r.setrole = 0 AND s.setting LIKE 'default\\_transaction\\_read\\_only=%'
"""


# -- backing up ---------------------------------------------------------------------------


def backup_postgres(database_url: str, path: Path, progress: Progress | None) -> str | None:
    pg_dump = tool("pg_dump")
    engine = _engine(database_url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            # pg_dump adopts this transaction's snapshot, so the dump and the revision read
            # here are the same state of the database, whatever runs meanwhile.
            snapshot = connection.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            revision = version.read_revision(version.sqlalchemy_rows(connection), "postgresql")
            with libpq(database_url) as (conninfo, env):
                command = [pg_dump, "--format=custom", "--no-password", f"--snapshot={snapshot}",
                           f"--file={path}", f"--dbname={conninfo}"]
                run_tool(command, env, database_url,
                         poll=lambda: progress(_size(path), None) if progress else None)
    except DBAPIError as exc:
        raise BackupError(
            f"cannot back up {mask_url(database_url)}: {first_line(exc)}; "
            "check DATABASE_URL and that the server is running"
        ) from None
    finally:
        engine.dispose()
    return revision


def _engine(database_url: str):
    # Our sessions write during a restore, while other new sessions are read-only by default.
    connect_args = {"connect_timeout": 10, "options": READ_WRITE}
    engine = create_engine(database_url, poolclass=NullPool, connect_args=connect_args)
    # A backup's snapshot is held by a transaction that sits idle while pg_dump runs: a
    # managed server's idle timeouts must not end it.
    event.listen(engine, "connect", protect_new_session)
    return engine


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# -- restoring ----------------------------------------------------------------------------


def check_archive_data(database_url: str, path: Path) -> None:
    """Every data block, not just the table of contents (`--list` reads only that): an archive
    cut short must be refused before the restore ends sessions and takes its safety dump. It
    reads the whole archive, with no connection and so no secret (0.8 s for 1,000,000 tasks)."""
    command = [tool("pg_restore"), f"--file={os.devnull}", str(path)]
    try:
        run_tool(command, None, database_url)
    except BackupError as exc:
        raise NotABackupError(f"{exc}; pick another backup") from None


def load_into_empty(database_url: str, path: Path) -> None:
    """Restore a pg_dump archive into a new, empty database (a rehearsal's copy): nothing to
    clean first, and neither owners nor grants, since the copy belongs to whoever made it."""
    pg_restore = tool("pg_restore")
    with libpq(database_url) as (conninfo, env):
        run_tool([pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
                  "--no-password", f"--dbname={conninfo}", str(path)], env, database_url)


def restore_postgres_safely(
    database_url: str,
    info: BackupInfo,
    progress: Progress | None,
    safety_dir: Path | None,
    notify: Notify | None,
    spare: Iterable[int],
) -> RestoreReport:
    """The restore runs in one transaction of one session of ours, which first locks every
    table of the database: see `Window`."""
    tell = notify or (lambda _message: None)
    safety = None
    # Imported here, not at the top: the window imports psycopg, which is slow to import (0.17 s
    # and more, `python -X importtime -c "import psycopg"`), and only a PostgreSQL restore needs
    # it, not the commands that import this package to back up SQLite or list backups.
    from orchestrator.migrations.backup.window import Window

    with Window(database_url, tell, spare) as window:
        # A failure the watcher caused (it cancelled our statements) is told as the watcher
        # saw it, not as the cancelled statement's error.
        try:
            window.lock()
            if safety_dir is not None:
                safety = write_backup(database_url, safety_dir, None, "before-restore",
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


# -- read-only by default -----------------------------------------------------------------


def read_only_setting(connection) -> str | None:
    """The database's own `default_transaction_read_only=...` setting, if it has one."""
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
