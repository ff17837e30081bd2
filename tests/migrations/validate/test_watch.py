"""Snapshots of a watched connection (the scratch database's): the catalog entries of only the
tables its statements touched are read, and every snapshot still equals a fresh reflection of
the whole schema (issue 17)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from orchestrator.db import create_engine
from orchestrator.migrations.validate import SchemaReader, schema_snapshot
from tests.migrations.validate.test_scale import CHANGES

# What only PostgreSQL prints into other tables' definitions: a referred column's or table's
# name, a type's, a sequence's and a function's; and what CASCADE drops elsewhere.
POSTGRES_CHANGES = [
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, code VARCHAR(10) NOT NULL UNIQUE)",
    "CREATE TABLE child (id SERIAL PRIMARY KEY, parent_id INTEGER REFERENCES parent (id), "
    "n INTEGER DEFAULT 3)",
    "ALTER TABLE parent RENAME COLUMN id TO parent_key",
    "ALTER TABLE parent RENAME TO mother",
    "CREATE TYPE mood AS ENUM ('calm', 'busy')",
    "ALTER TABLE child ADD COLUMN feeling mood",
    "ALTER TYPE mood RENAME TO feeling_kind",
    "CREATE SEQUENCE counter",
    "ALTER TABLE child ADD COLUMN serial_n BIGINT DEFAULT nextval('counter')",
    "CREATE TABLE spacer_1 (id INTEGER)",  # the rename comes a transaction later
    "ALTER SEQUENCE counter RENAME TO tally",
    "CREATE FUNCTION positive(n INTEGER) RETURNS BOOLEAN LANGUAGE sql IMMUTABLE "
    "AS 'SELECT n > 0'",
    "ALTER TABLE child ADD CONSTRAINT ck_child_n CHECK (positive(n))",
    "CREATE TABLE spacer_2 (id INTEGER)",
    "ALTER FUNCTION positive(INTEGER) RENAME TO is_positive",
    # A column of an array of a type depends on the array type, which the rename renames too.
    "CREATE TYPE tag AS ENUM ('new', 'old')",
    "ALTER TABLE child ADD COLUMN tags tag[]",
    "CREATE TABLE spacer_3 (id INTEGER)",
    "ALTER TYPE tag RENAME TO label",
    # A renamed enum value changes the default that names it; only pg_enum records it.
    "ALTER TABLE child ALTER COLUMN feeling SET DEFAULT 'calm'",
    "CREATE TABLE spacer_4 (id INTEGER)",
    "ALTER TYPE feeling_kind RENAME VALUE 'calm' TO 'quiet'",
    "CREATE INDEX ix_child_n ON child (n)",
    "DROP INDEX ix_child_n",
    "DROP TABLE mother CASCADE",
    # A table of another schema is not part of the snapshot; an index of it, dropped, is one
    # the reader never printed (so it reads everything once).
    "CREATE SCHEMA elsewhere",
    "CREATE TABLE elsewhere.outside (id INTEGER PRIMARY KEY, n INTEGER)",
    "CREATE INDEX ix_outside_n ON elsewhere.outside (n)",
    "DROP INDEX elsewhere.ix_outside_n",
]


class Reads:
    """How often `reader` read the whole catalog (its watcher could not name the tables)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, reader: SchemaReader) -> None:
        self.whole = 0
        sqlite_changes = SchemaReader._sqlite_changes
        postgres_everything = SchemaReader._postgres_everything

        def sqlite(this, connection, touched):
            self.whole += this is reader and touched is None
            return sqlite_changes(this, connection, touched)

        def postgres(this, connection):
            self.whole += this is reader
            return postgres_everything(this, connection)

        monkeypatch.setattr(SchemaReader, "_sqlite_changes", sqlite)
        monkeypatch.setattr(SchemaReader, "_postgres_everything", postgres)


def follow(url: str, reader: SchemaReader, statements: list[str], watch: bool = True) -> None:
    """Each change snapshotted in its own transaction, as a migration step is, and compared
    with a fresh reflection of the whole schema."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if watch:
                reader.watch(connection)
            assert reader.snapshot(connection) == {}
            connection.commit()
            for statement in statements:
                connection.execute(text(statement))
                watched = reader.snapshot(connection)
                connection.commit()
                assert watched == schema_snapshot(url), statement
    finally:
        engine.dispose()


def test_watched_snapshots_equal_a_fresh_reflection_after_every_change(db_url, monkeypatch):
    sqlite = db_url.startswith("sqlite")
    reader = SchemaReader()
    reads = Reads(monkeypatch, reader)
    follow(db_url, reader, CHANGES if sqlite else POSTGRES_CHANGES)
    # The first snapshot reads everything; then, SQLite: only its ALTER TABLEs (which may
    # rename, and rewrite other tables' references); PostgreSQL: only the index of a table it
    # never printed.
    assert reads.whole == 1 + (3 if sqlite else 1)


def test_a_rolled_back_step_is_read_again(db_url):
    reader = SchemaReader()
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            reader.watch(connection)
            connection.execute(text(CHANGES[0]))
            connection.commit()
            before = reader.snapshot(connection)
            connection.commit()
            connection.execute(text(CHANGES[1]))
            assert "child" in reader.snapshot(connection)
            connection.rollback()
            assert reader.snapshot(connection) == before == schema_snapshot(db_url)
    finally:
        engine.dispose()


def test_a_change_the_watcher_could_not_see_is_read_whole(db_url):
    """Another connection's DDL: PostgreSQL's event triggers see every session's; SQLite's
    authorizer sees only its own connection's, and the schema's version number tells."""
    reader = SchemaReader()
    engine, other = create_engine(db_url), create_engine(db_url)
    try:
        with engine.connect() as connection, other.connect() as elsewhere:
            reader.watch(connection)
            reader.snapshot(connection)
            connection.commit()
            elsewhere.execute(text(CHANGES[0]))
            elsewhere.commit()
            snapshot = reader.snapshot(connection)
            connection.commit()
    finally:
        engine.dispose()
        other.dispose()
    assert snapshot == schema_snapshot(db_url) and "parent" in snapshot


@pytest.mark.postgres
def test_without_a_superuser_snapshots_read_the_catalog(postgres_url):
    """Event triggers take a superuser: a plain role's scratch database is read whole at each
    snapshot, and renames that only other objects' rows record (a sequence's, a function's,
    a type's) are still seen."""
    role = f"orchestrator_plain_{uuid.uuid4().hex[:8]}"
    database = make_url(postgres_url).database
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT CREATE ON SCHEMA public TO {role}")
        connection.exec_driver_sql(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
    plain_url = make_url(postgres_url).set(username=role, password=None) \
        .render_as_string(hide_password=False)
    reader = SchemaReader()
    try:
        engine = create_engine(plain_url)
        try:
            with engine.connect() as connection:
                reader.watch(connection)
                connection.rollback()
        finally:
            engine.dispose()
        assert reader._watch is None
        follow(plain_url, reader, POSTGRES_CHANGES, watch=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
