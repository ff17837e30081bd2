"""Schema snapshots (tables with their columns, keys, indexes and checks, comparable with ==)
and their differences, one line each."""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine
from orchestrator.migrations.validate.watch import PostgresWatch, SqliteWatch
from orchestrator.migrations.version import BOOKKEEPING_TABLES


def schema_snapshot(database_url: str,
                    reader: SchemaReader | None = None) -> dict[str, dict[str, Any]]:
    """Tables with their columns, keys, indexes and checks, in a form that compares with ==.
    With `reader` (of another database of the same kind), the tables whose catalog entries
    it has seen are not reflected again (`SchemaReader.sharing`)."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return (reader.sharing() if reader else SchemaReader()).snapshot(connection)
    finally:
        engine.dispose()


# One catalog query per snapshot: every table with everything its reflection reads (its
# definition and its indexes' on SQLite; columns, defaults, constraints and indexes as the
# server prints them on PostgreSQL). A table whose entry is unchanged is not reflected again.
_SQLITE_CATALOG = (
    "SELECT tbl_name, type, name, sql FROM sqlite_master "
    "WHERE tbl_name NOT LIKE 'sqlite~_%' ESCAPE '~'"
)
_POSTGRES_CATALOG = """
SELECT c.oid, concat_ws(E'\\n',
  (SELECT string_agg(concat_ws(':', a.attname, format_type(a.atttypid, a.atttypmod),
                               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
                               a.attgenerated, a.attcollation), ',' ORDER BY a.attnum)
   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT string_agg(concat_ws(' ', k.conname, k.contype, pg_get_constraintdef(k.oid)), ','
                     ORDER BY k.conname)
   FROM pg_constraint k WHERE k.conrelid = c.oid),
  (SELECT string_agg(pg_get_indexdef(x.indexrelid), ',' ORDER BY x.indexrelid::regclass::text)
   FROM pg_index x WHERE x.indrelid = c.oid)),
  c.relname,
  (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid),
  (SELECT array_agg(x.indexrelid) FROM pg_index x WHERE x.indrelid = c.oid)
FROM pg_class c
WHERE c.oid = ANY(CAST(:tables AS oid[])) AND c.relkind IN ('r', 'p')
  AND c.relnamespace = CAST(current_schema() AS regnamespace)
"""
# The tables, with how many indexes and constraints each has (a DROP INDEX or DROP CONSTRAINT
# deletes catalog rows and may write none), and the first transaction whose catalog changes a
# later snapshot must look at: ours when we have written, else the oldest one still running.
_POSTGRES_TABLES = """
SELECT c.relname, c.oid, coalesce(x.n, 0), coalesce(k.n, 0),
       (SELECT coalesce(txid_current_if_assigned(), txid_snapshot_xmin(txid_current_snapshot()))
        % 4294967296)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN (SELECT indrelid, count(*) AS n FROM pg_index GROUP BY indrelid) x ON x.indrelid = c.oid
LEFT JOIN (SELECT conrelid, count(*) AS n FROM pg_constraint GROUP BY conrelid) k
  ON k.conrelid = c.oid
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""
# The tables with a catalog row written since transaction :since (any DDL on a table writes
# one: its own, its columns', defaults', constraints', indexes', its referred tables' or its
# column types'), and those whose columns, defaults, checks or indexes use a sequence or a
# function renamed since, or an enum whose values changed: only their definitions are printed
# again.
_POSTGRES_TOUCHED = """
SELECT attrelid FROM pg_attribute WHERE xmin::text::bigint >= :since
UNION SELECT oid FROM pg_class WHERE xmin::text::bigint >= :since
UNION SELECT adrelid FROM pg_attrdef WHERE xmin::text::bigint >= :since
UNION SELECT conrelid FROM pg_constraint WHERE xmin::text::bigint >= :since
UNION SELECT k.conrelid FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid
  WHERE r.xmin::text::bigint >= :since
UNION SELECT k.conrelid FROM pg_constraint k JOIN pg_attribute ra ON ra.attrelid = k.confrelid
  WHERE ra.xmin::text::bigint >= :since
UNION SELECT indrelid FROM pg_index WHERE xmin::text::bigint >= :since
UNION SELECT x.indrelid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
  WHERE i.xmin::text::bigint >= :since
UNION SELECT a.attrelid FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
  WHERE t.xmin::text::bigint >= :since
UNION SELECT coalesce(ad.adrelid, k.conrelid, x.indrelid, d.objid) FROM pg_depend d
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
  LEFT JOIN pg_constraint k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid
  LEFT JOIN pg_index x ON d.classid = 'pg_class'::regclass AND x.indexrelid = d.objid
  WHERE (d.refclassid = 'pg_class'::regclass AND d.refobjid IN (
           SELECT oid FROM pg_class WHERE xmin::text::bigint >= :since))
     OR (d.refclassid = 'pg_proc'::regclass AND d.refobjid IN (
           SELECT oid FROM pg_proc WHERE xmin::text::bigint >= :since))
     OR (d.refclassid = 'pg_type'::regclass AND d.refobjid IN (
           SELECT e.enumtypid FROM pg_enum e WHERE e.xmin::text::bigint >= :since
           UNION SELECT t.typarray FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
            WHERE e.xmin::text::bigint >= :since))
"""


class SchemaReader:
    """Schema snapshots of databases of one kind. A table is reflected (SQLAlchemy's
    inspector, as `schema_snapshot` always did) only when its catalog entry is one this
    reader has not reflected yet, so a step that changes one table costs one table's
    reflection, not the whole schema's. Each snapshot is the last one with the tables whose
    catalog entries changed: on a watched connection (`watch`, the scratch database's) only
    the entries of the tables its statements touched are read; elsewhere the whole catalog
    is, in one query, and compared with the last snapshot's."""

    def __init__(self) -> None:
        self._reflected: dict[tuple[str, Any], dict[str, Any]] = {}
        # The last snapshot, and what it was made from: SQLite's catalog rows by table and the
        # tables whose entries have a REFERENCES without columns; PostgreSQL's tables'
        # definitions.
        self._last: dict[str, dict[str, Any]] = {}
        self._entry_rows: dict[str, tuple[tuple, ...]] = {}
        self._implicit_tables: frozenset[str] = frozenset()
        self._entries: dict[str, str] = {}
        # SQLite: whether a table's catalog entry has a REFERENCES without columns.
        self._implicit: dict[tuple, bool] = {}
        # PostgreSQL: each table's (by oid) index and constraint counts and printed
        # definition, and the first transaction whose changes they may not include.
        self._definitions: dict[int, tuple[tuple[int, int], str]] = {}
        self._since: int | None = None
        # The connection whose statements a watcher follows (`watch`), and the watcher.
        self._watched: Any = None
        self._watch: SqliteWatch | PostgresWatch | None = None
        # PostgreSQL: each table's name and each index's table, by oid (for a watcher's oids).
        self._names: dict[int, str] = {}
        self._index_owner: dict[int, int] = {}

    def watch(self, connection) -> None:
        """Follow what `connection`'s statements change, so that its snapshots read only
        the catalog entries of the tables they touched (for a scratch database, whose
        connection runs every migration step and takes every snapshot)."""
        if connection.dialect.name == "sqlite":
            self._watch = SqliteWatch(connection.connection.driver_connection)
        else:
            self._watch = PostgresWatch.install(connection)
            if self._watch is None:
                return
        self._watched = connection.connection.driver_connection
        # A rolled-back transaction may undo what a snapshot in it read: read everything.
        event.listen(connection, "rollback", lambda _connection: self._watch.forget())

    def sharing(self) -> SchemaReader:
        """A reader for another database of the same kind that reuses this one's reflections:
        a reflection depends only on the catalog entry it was made from (SQLite's rows, the
        definition PostgreSQL prints), not on which database holds it. What the snapshots
        are made from (rows, oids, transaction ids) stays each database's own."""
        other = SchemaReader()
        other._reflected = self._reflected
        other._implicit = self._implicit
        return other

    def snapshot(self, connection) -> dict[str, dict[str, Any]]:
        """The schema `connection` sees now (it reads in the connection's transaction)."""
        watch = self._watch if self._watched is connection.connection.driver_connection \
            else None
        if connection.dialect.name == "sqlite":
            changes = self._sqlite_changes(connection, watch.take() if watch else None)
        else:
            taken = watch.take(connection) if watch else None
            changes = self._postgres_touched(connection, *taken) if taken is not None \
                else self._postgres_everything(connection)
        if not changes:
            return self._last
        inspector = None
        snapshot = dict(self._last)
        for table, entry in changes.items():
            if entry is None or table in BOOKKEEPING_TABLES:
                snapshot.pop(table, None)
                continue
            key = (table, entry)
            if key not in self._reflected:
                inspector = inspector or inspect(connection)
                self._reflected[key] = _reflect(inspector, table, connection.dialect)
            snapshot[table] = self._reflected[key]
        self._last = snapshot = dict(sorted(snapshot.items()))
        return snapshot

    def _sqlite_changes(self, connection, touched: set[str] | None) -> dict[str, Any]:
        """The tables whose catalog entries (what their reflection depends on) differ from
        the last snapshot's, each with its entry now (None: no longer a table). Only the
        entries of `touched` are read (None: every table's)."""
        if self._implicit_tables:
            # Their reflection depends on other tables' entries (the primary keys they refer
            # to): such tables are read again whenever anything changed.
            touched = None
        elif touched is not None and not touched:
            return {}
        # The driver's cursor, in the connection's transaction: hundreds of rows when whole.
        cursor = connection.connection.cursor()
        try:
            if touched is None:
                rows = cursor.execute(_SQLITE_CATALOG).fetchall()
                scope = self._entry_rows.keys() | {row[0] for row in rows}
            else:
                scope = touched
                rows = cursor.execute(f"{_SQLITE_CATALOG} AND tbl_name IN "
                                      f"({', '.join('?' * len(touched))})",
                                      tuple(touched)).fetchall()
        finally:
            cursor.close()
        entries: dict[str, list[tuple]] = {table: [] for table in scope}
        for row in rows:
            entries[row[0]].append(row)
        everything = None
        implicit = set(self._implicit_tables)
        changes: dict[str, Any] = {}
        for table, entry_rows in entries.items():
            entry = tuple(sorted(entry_rows, key=itemgetter(1, 2)))
            if entry == self._entry_rows.get(table, ()) and table not in implicit:
                continue
            if entry:
                self._entry_rows[table] = entry
            else:
                self._entry_rows.pop(table, None)
            if not any(kind == "table" for _, kind, _, _ in entry):
                changes[table] = None  # dropped (or a view)
                implicit.discard(table)
                continue
            if entry not in self._implicit:
                self._implicit[entry] = any(_refers_implicitly(sql) for *_, sql in entry)
            if self._implicit[entry]:
                implicit.add(table)
                everything = hash(tuple(sorted(rows))) if everything is None else everything
                changes[table] = (entry, everything)
            else:
                implicit.discard(table)
                changes[table] = (entry, None)
        self._implicit_tables = frozenset(implicit)
        return changes

    def _postgres_catalog(self, connection) -> dict[str, Any]:
        """Each table's printed definition, printed again only for the tables whose catalog
        rows were written since the last snapshot (or whose counts changed)."""
        tables = connection.execute(text(_POSTGRES_TABLES)).all()
        horizon = tables[0][4] if tables else None
        stale = {oid for _, oid, indexes, constraints, _ in tables
                 if self._definitions.get(oid, (None,))[0] != (indexes, constraints)}
        if self._since is not None and horizon is not None and horizon >= self._since:
            stale |= set(connection.execute(text(_POSTGRES_TOUCHED),
                                            {"since": self._since}).scalars())
        else:  # the first snapshot (or transaction ids wrapped around): everything
            stale = {oid for _, oid, *_ in tables}
        counts = {oid: (indexes, constraints) for _, oid, indexes, constraints, _ in tables}
        stale &= set(counts)
        if stale:
            printed = connection.execute(text(_POSTGRES_CATALOG),
                                         {"tables": [str(oid) for oid in stale]}).all()
            for oid, definition, _, _, indexes in printed:
                self._definitions[oid] = (counts[oid], definition)
                self._index_owner.update(dict.fromkeys(indexes or (), oid))
        if horizon is not None:
            self._since = horizon
        self._names = {oid: table for table, oid, *_ in tables}
        return {table: self._definitions[oid][1] for table, oid, *_ in tables}

    def _postgres_everything(self, connection) -> dict[str, Any]:
        """The changes to every table of the schema since the last snapshot."""
        entries = self._postgres_catalog(connection)
        changes = dict.fromkeys(self._entries.keys() - entries.keys())
        changes.update(entries.items() - self._entries.items())
        self._entries = entries
        return changes

    def _postgres_touched(self, connection, tables: set[int],
                          dropped_indexes: set[int]) -> dict[str, Any]:
        """The changes to the tables a watcher saw touched (by oid; and the tables of the
        indexes it saw dropped): each one's printed definition, or None where a name is no
        longer a table's (dropped, renamed, or not a table of this schema any more)."""
        owners = [self._index_owner.pop(index, None) for index in dropped_indexes]
        if None in owners:  # an index this reader never printed: its table is unknown
            return self._postgres_everything(connection)
        tables.update(owners)  # type: ignore[arg-type]
        printed = {}
        if tables:
            printed = {row[0]: row[1:] for row in connection.execute(
                text(_POSTGRES_CATALOG), {"tables": [str(oid) for oid in tables]})}
        gone: dict[str, Any] = {}
        changes = {}
        for oid in tables:
            name = self._names.get(oid)
            if oid not in printed:
                if name is not None:
                    del self._names[oid]
                    gone[name] = None
                continue
            definition, table, constraints, indexes = printed[oid]
            if name is not None and name != table:
                gone[name] = None  # renamed
            self._names[oid] = table
            self._definitions[oid] = ((len(indexes or ()), constraints), definition)
            self._index_owner.update(dict.fromkeys(indexes or (), oid))
            changes[table] = definition
        changes = {**gone, **changes}
        for table, definition in changes.items():
            if definition is None:
                self._entries.pop(table, None)
            else:
                self._entries[table] = definition
        return changes


_REFERENCES_COLUMNS = re.compile(r'REFERENCES\s+(?:"[^"]*"|`[^`]*`|\[[^\]]*\]|[^\s(]+)\s*\(',
                                 re.IGNORECASE)


def _refers_implicitly(sql: str | None) -> bool:
    """Whether a table's SQL may have a REFERENCES without its column list."""
    if not sql:
        return False
    return sql.upper().count("REFERENCES") != len(_REFERENCES_COLUMNS.findall(sql))


def _reflect(inspector, table: str, dialect) -> dict[str, Any]:
    return {
        "columns": {
            c["name"]: (c["type"].compile(dialect=dialect), c["nullable"], str(c.get("default")))
            for c in inspector.get_columns(table)
        },
        "primary key": tuple(inspector.get_pk_constraint(table)["constrained_columns"]),
        "foreign keys": sorted(
            (fk["name"] or "", tuple(fk["constrained_columns"]), fk["referred_table"],
             tuple(fk["referred_columns"]), str(fk.get("options", {}).get("ondelete")))
            for fk in inspector.get_foreign_keys(table)
        ),
        "indexes": sorted(
            (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        ),
        "unique constraints": sorted(
            (u["name"] or "", tuple(u["column_names"]))
            for u in inspector.get_unique_constraints(table)
        ),
        "checks": sorted(
            (c["name"] or "", _condition(c["sqltext"]))
            for c in inspector.get_check_constraints(table)
        ),
    }


_CAST = re.compile(r"::[a-z_ ]+(?:\[\])*")


def _condition(sql: str) -> str:
    # PostgreSQL prints a CHECK condition with the casts it inferred, and infers them anew
    # when a dump is restored ('a'::character varying::text for 'a'::character varying):
    # compare the conditions without their casts.
    return " ".join(_CAST.sub("", sql).split())


def diff_schemas(expected: dict[str, dict], actual: dict[str, dict]) -> list[str]:
    """What `actual` has or lacks compared with `expected`, one line per difference."""
    if expected == actual:  # the same reflections (SchemaReader): nothing to list
        return []
    differences = [f"table {t} is missing" for t in sorted(set(expected) - set(actual))]
    differences += [f"table {t} is extra" for t in sorted(set(actual) - set(expected))]
    for table in sorted(set(expected) & set(actual)):
        want, have = expected[table], actual[table]
        if want is have:  # the same reflection, cached (SchemaReader)
            continue
        for column in sorted(set(want["columns"]) | set(have["columns"])):
            a, b = want["columns"].get(column), have["columns"].get(column)
            if a != b:
                differences.append(
                    f"column {table}.{column}: expected {_column(a)}, found {_column(b)}"
                )
        for part in ("primary key", "foreign keys", "indexes", "unique constraints", "checks"):
            if want[part] != have[part]:
                differences.append(
                    f"{part} of {table}: expected {want[part]}, found {have[part]}"
                )
    return differences


def _column(spec: tuple | None) -> str:
    if spec is None:
        return "no such column"
    kind, nullable, default = spec
    described = f"{kind} {'NULL' if nullable else 'NOT NULL'}"
    return described if default == "None" else f"{described} DEFAULT {default}"

