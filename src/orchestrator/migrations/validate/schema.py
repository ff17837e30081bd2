"""Schema snapshots (tables with their columns, keys, indexes and checks, comparable with ==)
and their differences, one line each."""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine
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
   FROM pg_index x WHERE x.indrelid = c.oid))
FROM pg_class c
WHERE c.oid = ANY(CAST(:tables AS oid[]))
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
# column types'): only their definitions are printed again.
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
"""


class SchemaReader:
    """Schema snapshots of databases of one kind, each from one catalog query: a table is
    reflected (SQLAlchemy's inspector, as `schema_snapshot` always did) only when its catalog
    entry is one this reader has not reflected yet, so a step that changes one table costs
    one table's reflection, not the whole schema's. Each snapshot is made from the last one
    and the tables whose catalog entries differ from the last one's (found by set operations
    on the catalog's rows, not a Python step per table): the schema is read whole at every
    snapshot, but only what changed is looked at."""

    def __init__(self) -> None:
        self._reflected: dict[tuple[str, Any], dict[str, Any]] = {}
        # The last snapshot, and what it was made from: SQLite's catalog rows and the tables
        # whose entries have a REFERENCES without columns; PostgreSQL's tables' definitions.
        self._last: dict[str, dict[str, Any]] = {}
        self._rows: frozenset[tuple] = frozenset()
        self._implicit_tables: frozenset[str] = frozenset()
        self._entries: dict[str, str] = {}
        # SQLite: whether a table's catalog entry has a REFERENCES without columns.
        self._implicit: dict[tuple, bool] = {}
        # PostgreSQL: each table's (by oid) index and constraint counts and printed
        # definition, and the first transaction whose changes they may not include.
        self._definitions: dict[int, tuple[tuple[int, int], str]] = {}
        self._since: int | None = None

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
        if connection.dialect.name == "sqlite":
            changes = self._sqlite_changes(connection)
        else:
            entries = self._postgres_catalog(connection)
            changes = dict.fromkeys(self._entries.keys() - entries.keys())
            changes.update(entries.items() - self._entries.items())
            self._entries = entries
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

    def _sqlite_changes(self, connection) -> dict[str, Any]:
        """The tables whose catalog entries (what their reflection depends on) differ from
        the last snapshot's, each with its entry now (None: no longer a table)."""
        # The driver's cursor, in the connection's transaction: hundreds of rows per snapshot.
        cursor = connection.connection.cursor()
        try:
            rows = frozenset(cursor.execute(_SQLITE_CATALOG).fetchall())
        finally:
            cursor.close()
        different = rows ^ self._rows
        if not different:
            return {}
        touched = {row[0] for row in different}
        # A foreign key without a column list refers to the other table's primary key: such a
        # table is read again whenever anything changed.
        touched |= self._implicit_tables
        entries: dict[str, list[tuple]] = {table: [] for table in touched}
        for row in rows:
            if row[0] in touched:
                entries[row[0]].append(row)
        everything = None
        implicit = set(self._implicit_tables - touched)
        changes: dict[str, Any] = {}
        for table, entry_rows in entries.items():
            if not any(kind == "table" for _, kind, _, _ in entry_rows):
                changes[table] = None  # dropped (or a view)
                implicit.discard(table)
                continue
            entry = tuple(sorted(entry_rows, key=itemgetter(1, 2)))
            if entry not in self._implicit:
                self._implicit[entry] = any(_refers_implicitly(sql) for *_, sql in entry)
            if self._implicit[entry]:
                implicit.add(table)
                everything = hash(tuple(sorted(rows))) if everything is None else everything
                changes[table] = (entry, everything)
            else:
                implicit.discard(table)
                changes[table] = (entry, None)
        self._rows, self._implicit_tables = rows, frozenset(implicit)
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
            for oid, definition in printed:
                self._definitions[oid] = (counts[oid], definition)
        if horizon is not None:
            self._since = horizon
        return {table: self._definitions[oid][1] for table, oid, *_ in tables}


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

