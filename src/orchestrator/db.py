"""Database URLs and engines: normalising, masking, SQLite pragmas, sessions.

One function per concern, shared by the CLI, the API, the migration system and the tests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_POSTGRES_ALIASES = {"postgres", "postgresql"}
# Seconds a SQLite connection waits for another one's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 30.0
_SECRET_WORDS = ("password", "secret", "token")
# name=value in a query string that could not be parsed, for a name holding one of the words.
_SECRET_PARAMETER = re.compile(
    r"([?&;][^=&;#]*(?:" + "|".join(_SECRET_WORDS) + r")[^=&;#]*=)[^&;#]*", re.IGNORECASE
)


class InvalidDatabaseUrl(ValueError):
    """The URL cannot be parsed or names an unsupported database."""


def normalize_url(url: str | URL) -> str:
    """Return `url` as a string, with `postgres://` and `postgresql://` mapped to psycopg 3."""
    if _several_at_signs(url):
        raise InvalidDatabaseUrl(
            f"{mask_url(url)!r} has more than one '@'; write an '@' in the user name or "
            "password as %40 (e.g. postgresql://app:p%40ss@host/db)"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise InvalidDatabaseUrl(
            f"{mask_url(url)!r} is not a database URL; "
            "expected e.g. sqlite:///orchestrator_dev.db or postgresql://user@host/dbname"
        ) from None
    if parsed.drivername in _POSTGRES_ALIASES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise InvalidDatabaseUrl(
            f"{parsed.drivername!r} is not a supported database; "
            "use sqlite:///path/to/file.db or postgresql://user@host/dbname"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise InvalidDatabaseUrl(
            "an in-memory SQLite database cannot be migrated and kept; "
            "give a file, e.g. sqlite:///orchestrator_dev.db"
        )
    return parsed.render_as_string(hide_password=False)


def is_secret_parameter(name: str) -> bool:
    """Whether a URL query parameter carries a secret (`password`, `sslpassword`, `api_token`,
    `client_secret`...): it is masked wherever the URL is shown."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def mask_url(url: str | URL) -> str:
    """The URL with its password, and every query parameter that holds a secret, replaced by
    `***`: safe to print or log."""
    if not _several_at_signs(url):
        try:
            text = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            pass
        else:
            return _SECRET_PARAMETER.sub(lambda match: f"{match[1]}***", text)
    # Unparseable, or an '@' left unencoded in the password (SQLAlchemy would split at the
    # first one): hide everything between "://user:" and the last "@", and secret parameters;
    # without "://" (a typo: `postgresql//app:pw@db/x`, `app:pw@db/x`), from the first ":".
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    head, sep, rest = text.partition("://")
    if not sep:
        head, rest = "", text
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        if sep or ":" in creds:
            user = creds.split(":", 1)[0]
            text = f"{head}{sep}{user}:***@{host}"
    return _SECRET_PARAMETER.sub(lambda match: f"{match[1]}***", text)


def _several_at_signs(url: str | URL) -> bool:
    """An '@' left unencoded in a password: nothing can tell where the password ends."""
    return not isinstance(url, URL) and str(url).partition("://")[2].count("@") > 1


def backend_name(url: str | URL) -> str:
    """`sqlite` or `postgresql` (or whatever SQLAlchemy calls the backend)."""
    name = make_url(url).get_backend_name()
    return "postgresql" if name in _POSTGRES_ALIASES else name


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind a SQLite URL, or None for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def create_engine(url: str | URL, **kwargs: object) -> Engine:
    """An engine for `url`; SQLite connections enforce foreign keys."""
    engine = sqlalchemy.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # Python's sqlite3 module commits silently before DDL; take over transaction control so
    # that a migration (DDL included) is one real transaction (SQLAlchemy's pysqlite recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # Several processes share the file (API, CLI, backups): wait for a busy database
    # instead of failing at once.
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cursor.close()


def _sqlite_on_begin(connection) -> None:
    # A transaction that will write asks for `sqlite_begin="BEGIN IMMEDIATE"`: it takes the
    # write lock up front, waiting through busy_timeout, instead of failing with "database is
    # locked" when a read lock cannot be upgraded under concurrent writers.
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))
