"""Scratch databases: uniquely named PostgreSQL databases made beside another and dropped after,
or a SQLite file in a temporary folder.

The validator builds its schemas on one, a rehearsal restores its copy into one, and the tests
and benchmarks make theirs with the same functions. Each carries who made it (host and process
id: a PostgreSQL database's comment, a folder's `owner.json`): one whose process is gone (killed
with SIGKILL, say) and that was not kept on purpose is stale, and `remove_stale` drops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from orchestrator.db import backend_name, create_engine
from orchestrator.migrations.errors import first_line


class DatabaseNotCreated(Exception):
    """CREATE DATABASE failed: `name` is the database it would have made, `error` the driver's
    error (the message is its first line)."""

    def __init__(self, name: str, error: DBAPIError) -> None:
        super().__init__(first_line(error))
        self.name = name
        self.error = error


# Where the tests and benchmarks look for a server when they are not told (trust auth).
LOCAL_SERVERS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
)


def answering_server(urls: Iterable[str]) -> str | None:
    """The first of `urls` whose PostgreSQL server accepts a connection within 3 s, or None."""
    for url in urls:
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            return url
        except SQLAlchemyError:
            continue
        finally:
            engine.dispose()
    return None


def _admin(admin_url: str) -> Engine:
    # No pool: a server restarted between the create and the drop costs nothing.
    return create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                         connect_args={"connect_timeout": 10})


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def create_database(admin_url: str, prefix: str, *, template: str | None = None,
                    owner: str | None = None, encoding: str | None = None,
                    locale: tuple[str, str] | None = None, strategy: str | None = None,
                    comment: str | None = None) -> str:
    """A new database `<prefix>_<random>` on the server of `admin_url`; returns its URL.

    `template` copies a database (with `strategy` FILE_COPY or WAL_LOG), `owner` gives it to a
    role, `encoding` and `locale` (LC_COLLATE, LC_CTYPE) set how it stores and sorts text,
    `comment` is kept on it. Raises DatabaseNotCreated when the server refuses."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    clauses = [
        f'TEMPLATE "{template}"' if template else "",
        f"STRATEGY {strategy}" if strategy else "",
        f'OWNER "{owner}"' if owner else "",
        f"ENCODING {_literal(encoding)}" if encoding else "",
        f"LC_COLLATE {_literal(locale[0])} LC_CTYPE {_literal(locale[1])}" if locale else "",
    ]
    engine = _admin(admin_url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(
                " ".join([f'CREATE DATABASE "{name}"', *filter(None, clauses)]))
            if comment is not None:
                connection.exec_driver_sql(f'COMMENT ON DATABASE "{name}" IS {_literal(comment)}')
    except DBAPIError as exc:
        raise DatabaseNotCreated(name, exc) from exc
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) during or right after CREATE DATABASE: the database
        # may exist without the comment that names its maker, and nothing would sweep it.
        with contextlib.suppress(Exception):
            drop_database(admin_url, name)
        raise
    finally:
        engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url_or_name: str) -> None:
    """Drop a database (given by URL or name) if it exists, ending the sessions still on it."""
    name = make_url(url_or_name).database if "://" in url_or_name else url_or_name
    engine = _admin(admin_url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


@contextlib.contextmanager
def scratch_database(database_url: str, prefix: str = "orchestrator_scratch",
                     **options: str | None) -> Iterator[str]:
    """An empty database of the same kind as `database_url`, removed afterwards: on SQLite a
    file in a new temporary folder `<prefix>-…` (with dashes), on PostgreSQL a database made by
    `create_database(database_url, prefix, **options)` beside the one of `database_url`."""
    if backend_name(database_url) == "sqlite":
        folder = tempfile.mkdtemp(prefix=names(prefix)[1])
        try:
            (Path(folder) / OWNER_FILE).write_text(json.dumps(owner()))
            yield f"sqlite:///{Path(folder) / 'scratch.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    options.setdefault("comment", json.dumps(owner()))
    url = create_database(database_url, prefix, **options)
    try:
        yield url
    finally:
        drop_database(database_url, url)


OWNER_FILE = "owner.json"


def names(prefix: str) -> tuple[str, str]:
    """How the names of `scratch_database(url, prefix)`'s databases and folders start (what
    `remove_stale` is given)."""
    return f"{prefix}_", f"{prefix.replace('_', '-')}-"


def owner(kept: bool = False) -> dict:
    """Who makes a scratch database or folder now: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "kept": kept,
            "started": time.time()}


def is_stale(made_by: dict) -> bool:
    """Made on this host by a process that is gone, and not kept on purpose."""
    if made_by.get("kept") or made_by.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(made_by.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (OSError, TypeError, ValueError):  # another user's process, or no process id
        return False
    return False


def remove_stale(database_url: str, prefixes: Iterable[tuple[str, str]]) -> list[str]:
    """Drop the stale scratch folders (in the temporary folder) and, beside a PostgreSQL
    `database_url`, the stale scratch databases whose names start with one of `prefixes`
    ((database prefix, folder prefix) pairs); returns their names. What carries no owner, or
    an unreadable one, is left alone."""
    prefixes = list(prefixes)
    removed = []
    for _, folder_prefix in prefixes:
        for folder in Path(tempfile.gettempdir()).glob(f"{folder_prefix}*"):
            try:
                made_by = json.loads((folder / OWNER_FILE).read_text())
            except (OSError, ValueError):
                continue
            if is_stale(made_by):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
    if backend_name(database_url) == "postgresql":
        removed += _remove_stale_databases(database_url, [p for p, _ in prefixes])
    return removed


def _remove_stale_databases(database_url: str, prefixes: list[str]) -> list[str]:
    removed = []
    patterns = [prefix.replace("_", r"\_") + "%" for prefix in prefixes]
    engine = _admin(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname LIKE ANY(:patterns)"), {"patterns": patterns}).all()
        for name, comment in rows:
            try:
                made_by = json.loads(comment or "")
            except ValueError:
                continue
            if isinstance(made_by, dict) and is_stale(made_by):
                with contextlib.suppress(DBAPIError):  # another's to drop, or gone already
                    drop_database(database_url, name)
                    removed.append(name)
    except DBAPIError:
        return removed  # unreachable: the command itself says so next
    finally:
        engine.dispose()
    return removed
