"""The revision of this database, as Alembic records it in `alembic_version`: read here, once.

Below everything else in the migration core (no import of the manager, the backup or the
lock), so that each reads the revision the same way: the manager through SQLAlchemy, the
backup through sqlite3 and psycopg directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

VERSION_TABLE = "alembic_version"
# Tables of ours beside the schema: a database with only these has no schema yet.
BOOKKEEPING_TABLES = frozenset({VERSION_TABLE, "migration_history"})
# The tables of the connection's default schema, as SQLAlchemy's inspector lists them.
TABLE_NAMES_SQL = {
    "postgresql": "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema()",
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' "
    "ESCAPE '~'",
}
# A row when the version table exists (PostgreSQL: where the search path finds it).
_HAS_VERSION_SQL = {
    "postgresql": f"SELECT 1 WHERE to_regclass('{VERSION_TABLE}') IS NOT NULL",
    "sqlite": f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{VERSION_TABLE}'",
}
SELECT_VERSION_SQL = f"SELECT version_num FROM {VERSION_TABLE}"

# Runs one SQL statement and returns its rows, whatever the driver.
Rows = Callable[[str], Sequence[Any]]


def table_names(connection: Any, dialect: str) -> set[str]:
    """The tables of a SQLAlchemy connection's default schema: what the inspector's
    get_table_names() asks, without compiling its reflection query (4 ms of CPU on
    PostgreSQL, paid by every replica starting at once)."""
    return {name for (name,) in connection.exec_driver_sql(TABLE_NAMES_SQL[dialect])}


def read_revision(rows: Rows, dialect: str) -> str | None:
    """The revision recorded in the version table (None: no table, or no row in it), read
    through `rows`, which runs a statement on the caller's connection and returns its rows."""
    if not rows(_HAS_VERSION_SQL[dialect]):
        return None
    found = rows(SELECT_VERSION_SQL)
    return found[0][0] if found else None


def sqlalchemy_rows(connection: Any) -> Rows:
    """`rows` for a SQLAlchemy connection."""
    return lambda sql: connection.exec_driver_sql(sql).fetchall()


def dbapi_rows(connection: Any) -> Rows:
    """`rows` for a driver's own connection (sqlite3, psycopg)."""
    return lambda sql: connection.execute(sql).fetchall()
