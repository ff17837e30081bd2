"""The throwaway copies a rehearsal migrates: made, marked as ours, dropped, and swept up.

A PostgreSQL copy is a new database `orchestrator_rehearsal_of_<name>_<random>`, restored from a
fresh `pg_dump` of the database (the backup machinery's) or from a backup file; a SQLite copy is
a folder `orchestrator-rehearsal-of-<name>-…` in the temporary folder holding a consistent copy
of the file. Each copy carries who made it (host and process id; the database's comment, the
folder's `owner.json`): a copy whose process is gone and that was not `--keep`-ed is stale, and
the next rehearsal or `db validate` drops it, so a rehearsal killed with SIGKILL leaves nothing
behind for long.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from orchestrator.db import backend_name, create_engine, mask_url, sqlite_path
from orchestrator.migrations import backup, scratch
from orchestrator.migrations.errors import (
    DatabaseUnreachableError,
    Fault,
    RehearsalCopyError,
    classify,
)
from orchestrator.migrations.scratch import (
    OWNER_FILE,
    DatabaseNotCreated,
    create_database,
    drop_database,
    owner,
)

DATABASE_PREFIX = "orchestrator_rehearsal_of_"
FOLDER_PREFIX = "orchestrator-rehearsal-of-"


@dataclass(frozen=True)
class Copy:
    url: str
    name: str
    source: str
    seconds: float
    revision: str | None


def _slug(name: str, length: int = 20) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower())[:length].strip("_") or "db"


@contextlib.contextmanager
def scratch_copy(database_url: str, *, from_backup: Path | None = None,
                 keep: bool = False) -> Iterator[Copy]:
    """A copy of the database (or of `from_backup`), dropped afterwards unless `keep`."""
    remove_stale(database_url)
    if from_backup is not None:
        backup.restorable(database_url, from_backup, other_database=True)
    if backend_name(database_url) == "sqlite":
        with _sqlite_copy(database_url, from_backup, keep) as copy:
            yield copy
    else:
        with _postgres_copy(database_url, from_backup, keep) as copy:
            yield copy


@contextlib.contextmanager
def _sqlite_copy(database_url: str, from_backup: Path | None, keep: bool) -> Iterator[Copy]:
    source = sqlite_path(database_url)
    if from_backup is None and not source.exists():
        raise DatabaseUnreachableError(
            f"{source} does not exist: there is nothing to rehearse on; "
            "check DATABASE_URL (`orchestrator db upgrade` creates a new database)")
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{_slug(source.stem)}-"))
    (folder / OWNER_FILE).write_text(json.dumps(owner(keep)))
    path = folder / f"{source.stem}-rehearsal.db"
    started = time.perf_counter()
    try:
        if from_backup is not None:
            shutil.copyfile(from_backup, path)
            described, revision = _from_backup(database_url, from_backup)
        else:
            info = backup.create(database_url, backup_dir=folder, output=path,
                                 reason="rehearsal")
            described, revision = "SQLite backup of the database", info.revision
        yield Copy(f"sqlite:///{path}", str(path), described, time.perf_counter() - started,
                   revision)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _postgres_copy(database_url: str, from_backup: Path | None,
                   keep: bool) -> Iterator[Copy]:
    source = make_url(database_url).database or "postgres"
    started = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        # The copy's database first: a role that may not create one learns it before a dump.
        url = _create_database(database_url, f"{DATABASE_PREFIX}{_slug(source)}", keep)
        name = make_url(url).database
        if not keep:
            cleanup.callback(drop_database, database_url, name)
        if from_backup is None:
            # The dump's folder is marked as ours too: a killed rehearsal's is swept up.
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(
                prefix=f"{FOLDER_PREFIX}{_slug(source)}-dump-")))
            (folder / OWNER_FILE).write_text(json.dumps(owner()))
            dump = backup.create(database_url, backup_dir=folder,
                                 output=folder / f"{source}.dump", reason="rehearsal")
            backup.load_into_empty(url, dump.path)
            dump.path.unlink()  # room for the migration
            described, revision = "pg_dump of the database", dump.revision
        else:
            backup.load_into_empty(url, from_backup)
            described, revision = _from_backup(database_url, from_backup)
        yield Copy(url, name, described, time.perf_counter() - started, revision)


def _from_backup(database_url: str, path: Path) -> tuple[str, str | None]:
    """What the copy was made from, and its revision.

    A backup of another database (a replica's, or by mistake an empty staging one's) is
    rehearsed on, but named: a pass on someone else's rows must not read as this one's.
    """
    info = backup.inspect_backup(path)
    described = f"backup {path}"
    if info.database is not None and not backup.same_database(
            info.database, backup.database_identity(database_url)):
        described += f" of {info.database}"
    return described, info.revision


def _admin(database_url: str):
    return create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                         connect_args={"connect_timeout": 10})


def _create_database(database_url: str, prefix: str, keep: bool) -> str:
    """A new empty database `<prefix>_<random>` beside the original, marked as ours; its URL."""
    try:
        engine = _admin(database_url)
        try:
            with engine.connect() as connection:
                # The copy sorts and compares text as the original does (its indexes depend
                # on it).
                encoding, collate, ctype = connection.execute(text(
                    "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                    "WHERE datname = current_database()")).one()
        finally:
            engine.dispose()
        return create_database(database_url, prefix, template="template0", encoding=encoding,
                               locale=(collate, ctype), comment=json.dumps(owner(keep)))
    except (DBAPIError, DatabaseNotCreated) as exc:
        # A refusal names the database it would have made; reading the original's locale
        # fails before there is a name.
        refused = exc if isinstance(exc, DatabaseNotCreated) else DatabaseNotCreated(
            f"{prefix}_…", exc)
        # Only a refusal is cured by CREATEDB; a name taken, a full disk or no free
        # connection is not.
        advice = ("the role needs CREATEDB (`ALTER ROLE … CREATEDB`), or rehearse as a role "
                  "that has it" if classify(refused.error) is Fault.PRIVILEGE else
                  "the server needs room and a free connection for a copy of the database; "
                  "try again once it has them")
        raise RehearsalCopyError(
            f"cannot create the rehearsal copy {refused.name} beside {mask_url(database_url)}: "
            f"{refused}; {advice}") from None


def remove_stale(database_url: str) -> list[str]:
    """Drop the copies that rehearsals killed on this host left behind; returns their names."""
    return scratch.remove_stale(database_url, [(DATABASE_PREFIX, FOLDER_PREFIX)])
