"""Which tables a scratch connection's statements changed, as the database itself names them:
so that a schema snapshot reads the catalog entries of those tables only, not the whole
catalog at every step of a long chain.

SQLite names the table of every schema change it compiles to its authorizer; PostgreSQL
reports every DDL command, and every object it drops, to an event trigger. What a watcher
cannot attribute to tables (a rename, which rewrites other tables' references; a change it
did not see; a rolled-back transaction) it answers with None: read the whole catalog.
"""

from __future__ import annotations

import sqlite3

# SQLite's authorizer actions that create or drop a table, index, view or trigger (the
# table's name is the first or the second argument), and the one that alters a table in
# place (ADD or DROP COLUMN, but also RENAME, which rewrites other tables' references).
_TABLE_FIRST = frozenset({
    sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE,
})
_TABLE_SECOND = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_DROP_TRIGGER,
})


class SqliteWatch:
    """The tables a SQLite connection's statements touched since the last `take()`.

    SQLite calls the authorizer for each statement it compiles (and compiles a cached
    statement again after any schema change), naming the table of every CREATE or DROP. When
    the schema's version number moved but the authorizer named no table (another connection's
    change), every table may have changed."""

    def __init__(self, driver_connection: sqlite3.Connection) -> None:
        self._connection = driver_connection
        self._tables: set[str] = set()
        self._unknown = True  # the first snapshot reads everything
        driver_connection.set_authorizer(self._authorize)
        self._version = self._schema_version()

    def _authorize(self, action: int, first: str | None, second: str | None,
                   database: str | None, _trigger: str | None) -> int:
        if database == "main":
            if action in _TABLE_FIRST:
                self._tables.add(first)  # type: ignore[arg-type]
            elif action in _TABLE_SECOND:
                self._tables.add(second)  # type: ignore[arg-type]
        if action == sqlite3.SQLITE_ALTER_TABLE or (
                action == sqlite3.SQLITE_PRAGMA and first == "writable_schema"):
            self._unknown = True
        return sqlite3.SQLITE_OK

    def _schema_version(self) -> int:
        return self._connection.execute("PRAGMA schema_version").fetchone()[0]

    def forget(self) -> None:
        """A transaction was rolled back: what was taken from it is undone."""
        self._unknown = True

    def take(self) -> set[str] | None:
        """The tables touched since the last call (None: any table may have changed)."""
        version = self._schema_version()
        tables, unknown = self._tables, self._unknown
        self._tables, self._unknown = set(), False
        changed, self._version = version != self._version, version
        if unknown or (changed and not tables):
            return None
        return tables


# The tables an object belongs to (a table itself, an index's, a constraint's, a default's),
# and the tables whose definitions print an object's name: those whose columns, defaults,
# constraints or indexes depend on it (pg_depend), on its row type, or on its array type.
# An event trigger logs them for every DDL command and for every object a command drops; the
# log is read, and emptied, in the snapshot's transaction. A failure inside the trigger logs
# 0 (read everything) rather than failing the migration it watches.
_POSTGRES_WATCH = r"""
CREATE SCHEMA orchestrator_watch;
CREATE UNLOGGED TABLE orchestrator_watch.touched (relid oid, dropped_index oid);
CREATE FUNCTION orchestrator_watch.tables_of(class oid, object oid) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
  SELECT c.oid FROM pg_class c
   WHERE class = 'pg_class'::regclass AND c.oid = object AND c.relkind IN ('r', 'p')
  UNION ALL SELECT x.indrelid FROM pg_index x
   WHERE class = 'pg_class'::regclass AND x.indexrelid = object
  UNION ALL SELECT k.conrelid FROM pg_constraint k
   WHERE class = 'pg_constraint'::regclass AND k.oid = object AND k.conrelid <> 0
  UNION ALL SELECT d.adrelid FROM pg_attrdef d
   WHERE class = 'pg_attrdef'::regclass AND d.oid = object
$$;
CREATE FUNCTION orchestrator_watch.dependents(class oid, object oid) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
  WITH types AS (
    SELECT object AS type WHERE class = 'pg_type'::regclass
    UNION SELECT c.reltype FROM pg_class c
     WHERE class = 'pg_class'::regclass AND c.oid = object AND c.reltype <> 0
  ), objects (class, object) AS (
    SELECT class, object
    UNION SELECT 'pg_type'::regclass::oid, type FROM types
    UNION SELECT 'pg_type'::regclass::oid, t.typarray FROM types JOIN pg_type t ON t.oid = type
     WHERE t.typarray <> 0
  )
  SELECT t FROM objects o
   JOIN pg_depend d ON d.refclassid = o.class AND d.refobjid = o.object,
   orchestrator_watch.tables_of(d.classid, d.objid) t
$$;
CREATE FUNCTION orchestrator_watch.commands() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO orchestrator_watch.touched (relid)
  SELECT t FROM pg_event_trigger_ddl_commands() c,
         orchestrator_watch.tables_of(c.classid, c.objid) t
  UNION ALL
  SELECT t FROM pg_event_trigger_ddl_commands() c,
         orchestrator_watch.dependents(c.classid, c.objid) t
   WHERE c.command_tag NOT LIKE 'CREATE %';
EXCEPTION WHEN OTHERS THEN
  INSERT INTO orchestrator_watch.touched (relid) VALUES (0);
END $$;
CREATE FUNCTION orchestrator_watch.dropped() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO orchestrator_watch.touched (relid, dropped_index)
  SELECT CASE WHEN o.object_type IN ('table', 'table column') THEN o.objid
              WHEN o.object_type <> 'index' THEN to_regclass(
                quote_ident(o.address_names[1]) || '.' || quote_ident(o.address_names[2])) END,
         CASE WHEN o.object_type = 'index' THEN o.objid END
    FROM pg_event_trigger_dropped_objects() o
   WHERE o.object_type IN ('table', 'table column', 'index', 'table constraint', 'default value');
EXCEPTION WHEN OTHERS THEN
  INSERT INTO orchestrator_watch.touched (relid) VALUES (0);
END $$;
CREATE EVENT TRIGGER orchestrator_watch_commands ON ddl_command_end
  EXECUTE FUNCTION orchestrator_watch.commands();
CREATE EVENT TRIGGER orchestrator_watch_dropped ON sql_drop
  EXECUTE FUNCTION orchestrator_watch.dropped();
"""
_POSTGRES_TAKE = "DELETE FROM orchestrator_watch.touched RETURNING relid, dropped_index"


class PostgresWatch:
    """The tables a PostgreSQL database's DDL touched since the last `take()`, logged by event
    triggers (so every session's DDL, whichever way it was sent, in the transaction that ran
    it). Creating event triggers takes a superuser: `install` answers None without one."""

    def __init__(self) -> None:
        self._unknown = True  # the first snapshot reads everything

    @classmethod
    def install(cls, connection) -> PostgresWatch | None:
        """Watch the (empty, scratch) database `connection` is on; commits."""
        connection.rollback()
        # The driver's own connection, in a transaction of its own: several statements, no
        # parameters (nor % to escape).
        driver = connection.connection.driver_connection
        try:
            driver.execute(_POSTGRES_WATCH)
        except connection.dialect.loaded_dbapi.Error:
            driver.rollback()
            return None  # not a superuser (or no PL/pgSQL): snapshots read the catalog
        driver.commit()
        return cls()

    def forget(self) -> None:
        """A transaction was rolled back: what was taken from it is undone."""
        self._unknown = True

    def take(self, connection) -> tuple[set[int], set[int]] | None:
        """The oids of the tables touched since the last call, and of the indexes dropped
        (whose tables the caller knows); None: any table may have changed."""
        rows = connection.exec_driver_sql(_POSTGRES_TAKE).all()
        unknown, self._unknown = self._unknown, False
        tables = {relid for relid, _ in rows if relid is not None}
        if unknown or 0 in tables:
            return None
        return tables, {index for _, index in rows if index is not None}
