"""Scratch databases: uniquely named PostgreSQL databases made beside another and dropped after,
or a SQLite file in a temporary folder.

The validator builds its schemas on one, a rehearsal restores its copy into one, and the tests
and benchmarks make theirs with the same functions.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy import Engine
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
        folder = tempfile.mkdtemp(prefix=f"{prefix.replace('_', '-')}-")
        try:
            yield f"sqlite:///{Path(folder) / 'scratch.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    url = create_database(database_url, prefix, **options)
    try:
        yield url
    finally:
        drop_database(database_url, url)
