"""Watching a migration run on the copy, statement by statement, through SQLAlchemy's events.

Only statements issued from a revision's script count (the script is on the stack): the
version table, the history and the session settings around them are the runner's own.

PostgreSQL: after each statement inside a transaction, the locks the migration's backend holds
are read from `pg_locks` on the migration's own connection (a raw cursor, so no event fires; the
catalogue locks this read takes are left out); a lock first seen after a statement was taken by
it and is held until the transaction ends. A statement outside any transaction (CONCURRENTLY)
holds its locks only while it runs, so they are sampled from a second connection meanwhile.
`relfilenode` read before and after a statement shows a table rewritten.

SQLite: each step's transaction holds the whole database's write lock from its BEGIN IMMEDIATE
to its commit; a table's `rootpage` changing shows it copied (batch mode).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import event

from orchestrator.migrations.errors import one_line
from orchestrator.migrations.rehearse.locks import WRITES, blocks
from orchestrator.migrations.rehearse.report import (
    SQLITE_WRITE_LOCK,
    WHOLE_DATABASE,
    Lock,
    Statement,
    Step,
)

_OWN_LOCKS_SQL = """
SELECT l.relation, c.relname, l.mode
FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
WHERE l.pid = {pid} AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND (c.oid IS NULL OR (c.relkind IN ('r', 'p', 'm')
       AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)))
"""
_FILES_SQL = {
    "postgresql": "SELECT c.oid, c.relname, c.relfilenode FROM pg_catalog.pg_class c "
                  "WHERE c.relkind IN ('r', 'm') AND c.relnamespace = "
                  "current_schema()::regnamespace",
    "sqlite": "SELECT name, name, rootpage FROM sqlite_master WHERE type = 'table'",
}
_RUNNER_TABLES = frozenset({"alembic_version", "migration_history"})
# How often the second connection looks at pg_locks during a statement outside a transaction.
SAMPLE_INTERVAL = 0.005


def tables_with_rows(connection, dialect: str) -> set[str]:
    """The tables of the connection's schema that hold at least one row."""
    if dialect == "sqlite":
        names = [n for (n,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    else:
        names = [n for (n,) in connection.exec_driver_sql(
            "SELECT relname FROM pg_catalog.pg_class WHERE relkind IN ('r', 'p') "
            "AND relnamespace = current_schema()::regnamespace")]
    quote = connection.dialect.identifier_preparer.quote
    # The version and history tables are the runner's: the application does not wait on them.
    return {name for name in names if name not in _RUNNER_TABLES
            and connection.exec_driver_sql(f"SELECT 1 FROM {quote(name)} LIMIT 1").first()}


class Observer:
    """Collects `Step`s from the events of the copy's engine while `upgrade()` runs.

    On PostgreSQL `sampler` watches the statements that run outside a transaction."""

    def __init__(self, engine, dialect: str, scripts: dict[str, str], plan: Iterable[str],
                 with_rows: set[str], sampler: _Sampler | None = None) -> None:
        self.engine = engine
        self.dialect = dialect
        # Script file -> revision: which revision a statement came from.
        self.scripts = scripts
        self.plan = list(plan)
        self.with_rows = with_rows
        self.steps: list[Step] = []
        self._done = 0
        self._sampler = sampler
        self._statement: Statement | None = None
        self._started = 0.0
        # The migration's DBAPI connection (the first that ran a script's statement).
        self._dbapi: Any = None
        # Locks taken in the open transaction: (relation id, mode) -> Lock.
        self._held: dict[tuple[Any, str], Lock] = {}
        self._begun: float | None = None
        self._files: dict[Any, tuple[str, Any]] | None = None
        self._size: int | None = None

    _EVENTS = ("before_cursor_execute", "after_cursor_execute", "handle_error", "begin",
               "commit", "rollback")

    def attach(self) -> None:
        for name in self._EVENTS:
            event.listen(self.engine, name, getattr(self, f"_on_{name}"))

    def detach(self) -> None:
        for name in self._EVENTS:
            event.remove(self.engine, name, getattr(self, f"_on_{name}"))

    # -- steps ------------------------------------------------------------------------------

    @property
    def step(self) -> Step:
        """The step running now: the planned revision after those done."""
        if len(self.steps) <= self._done:
            self.steps.append(Step(self.plan[min(self._done, len(self.plan) - 1)]))
        return self.steps[self._done]

    def step_done(self, revision: str, seconds: float) -> None:
        """The manager's progress callback: `revision` finished (its commit is next)."""
        step = self.step
        step.duration_s = seconds
        self._done += 1
        if self.dialect == "sqlite" and self._dbapi is not None:
            size = self._sqlite_size()
            step.file_growth_bytes = size - (self._size if self._size is not None else size)
            self._size = size

    def failed(self, error: str) -> None:
        """The step that was running failed (its statements are already recorded)."""
        step = self.step
        step.ok = False
        step.duration_s = sum(s.duration_s for s in step.statements)
        step.error = next((s.error for s in step.statements if s.error), None) or error

    # -- statements -------------------------------------------------------------------------

    def _revision_lines(self) -> tuple[str | None, tuple[int, ...]]:
        frame = sys._getframe(2)
        revision, lines = None, []
        while frame is not None:
            owner = self.scripts.get(frame.f_code.co_filename)
            if owner is not None:
                revision = owner
                lines.append(frame.f_lineno)
            frame = frame.f_back
        return revision, tuple(lines)

    def _on_before_cursor_execute(self, conn, cursor, statement, parameters, context,
                                  executemany) -> None:
        if statement.lstrip()[:5].upper() == "BEGIN":
            return
        revision, lines = self._revision_lines()
        if revision is None:
            return
        dbapi = conn.connection.dbapi_connection
        if self._dbapi is None:
            self._dbapi = dbapi
            if self.dialect == "sqlite":
                self._size = self._sqlite_size()
        in_transaction = self._in_transaction(dbapi)
        self._statement = Statement(statement, lines, in_transaction)
        step = self.step
        if self.dialect == "sqlite" and self._begun is not None and not self._held:
            # The transaction's first statement: the write lock was taken by its BEGIN.
            lock = Lock(WHOLE_DATABASE, SQLITE_WRITE_LOCK, WRITES, bool(self.with_rows),
                        started=self._begun)
            self._held[(WHOLE_DATABASE, SQLITE_WRITE_LOCK)] = lock
            self._statement.locks.append(lock)
        step.statements.append(self._statement)
        if self._files is None:
            self._files = self._read_files(dbapi)
        if not in_transaction:
            self._sampler.start(dbapi.info.backend_pid)
        self._started = time.perf_counter()

    def _on_after_cursor_execute(self, conn, cursor, statement, parameters, context,
                                 executemany) -> None:
        current = self._statement
        if current is None or current.sql is not statement:
            return
        ended = time.perf_counter()
        current.duration_s = ended - self._started
        self._statement = None
        rowcount = getattr(cursor, "rowcount", -1)
        current.rows = rowcount if isinstance(rowcount, int) and rowcount >= 0 else None
        if self.dialect == "postgresql":
            if current.in_transaction:
                self._new_locks(current, self._own_locks(self._dbapi))
            else:
                seen = self._sampler.stop()
                names = self._names(self._dbapi, [oid for (oid, name, _), _ in seen.items()
                                                  if name is None])
                for (oid, name, mode), first in seen.items():
                    lock = self._lock(oid, name or names.get(oid), mode, first)
                    if lock is not None:
                        lock.held_s = ended - first
                        current.locks.append(lock)
        after = self._read_files(self._dbapi)
        current.rewrites = sorted(
            name for key, (name, node) in after.items()
            if key in self._files and self._files[key][1] != node)
        # Kept across statements: a table dropped and then put back under its name (SQLite's
        # batch mode renames its copy into place) shows as rewritten.
        self._files.update(after)

    def _on_handle_error(self, context) -> None:
        current = self._statement
        if current is None:  # pragma: no cover - the runner's own statements do not fail
            return
        current.duration_s = time.perf_counter() - self._started
        self._statement = None
        if not current.in_transaction:
            self._sampler.stop()
        error = getattr(context, "original_exception", None)
        current.error = one_line(error)

    def _on_begin(self, conn) -> None:
        self._begun = time.perf_counter()

    def _on_commit(self, conn) -> None:
        self._end_transaction(conn)

    def _on_rollback(self, conn) -> None:
        self._end_transaction(conn)

    def _end_transaction(self, conn) -> None:
        if self._dbapi is None or conn.connection.dbapi_connection is not self._dbapi:
            return
        now = time.perf_counter()
        for lock in self._held.values():
            lock.held_s = now - lock.started
        self._held = {}
        self._begun = None

    # -- reading the database ---------------------------------------------------------------

    def _in_transaction(self, dbapi) -> bool:
        if self.dialect == "sqlite":
            return True  # our SQLite migrations always run in a transaction (env.py)
        return not dbapi.autocommit

    def _own_locks(self, dbapi) -> list[tuple[Any, str | None, str]]:
        with dbapi.cursor() as cursor:
            cursor.execute(_OWN_LOCKS_SQL.format(pid=int(dbapi.info.backend_pid)))
            return list(cursor.fetchall())

    def _new_locks(self, statement: Statement, held: list[tuple[Any, str | None, str]]) -> None:
        for oid, name, mode in held:
            if (oid, mode) in self._held:
                continue
            lock = self._lock(oid, name, mode, self._started)
            if lock is not None:
                self._held[(oid, mode)] = lock
                statement.locks.append(lock)

    def _lock(self, oid, name: str | None, mode: str, started: float) -> Lock | None:
        """The lock on a table (None for another kind of relation)."""
        if name is None:  # dropped meanwhile: a table only if it was one before the statement
            if oid not in (self._files or {}):
                return None
            name = self._files[oid][0]
        return Lock(name, mode, blocks(mode), name in self.with_rows, started=started)

    def _names(self, dbapi, oids: list) -> dict:
        """Tables among relations the sampler could not see yet (created by the statement)."""
        if not oids:
            return {}
        with dbapi.cursor() as cursor:
            cursor.execute("SELECT oid, relname FROM pg_catalog.pg_class WHERE oid = ANY(%s) "
                           "AND relkind IN ('r', 'p', 'm')", (oids,))
            return dict(cursor.fetchall())

    def _read_files(self, dbapi) -> dict[Any, tuple[str, Any]]:
        cursor = dbapi.cursor()
        try:
            cursor.execute(_FILES_SQL[self.dialect])
            return {key: (name, node) for key, name, node in cursor.fetchall()}
        finally:
            cursor.close()

    def _sqlite_size(self) -> int:
        cursor = self._dbapi.cursor()
        try:
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            return pages * cursor.execute("PRAGMA page_size").fetchone()[0]
        finally:
            cursor.close()


class _Sampler:
    """A second connection that reads another backend's table locks while it is asked to."""

    def __init__(self, engine) -> None:
        self._connection = engine.raw_connection()
        self._connection.driver_connection.autocommit = True
        self._condition = threading.Condition()
        # `_busy`: asked to sample and not yet acknowledged the stop; `_running`: keep going.
        self._busy = self._running = self._closed = False
        self._pid = 0
        self._seen: dict[tuple[Any, str | None, str], float] = {}
        self._thread = threading.Thread(target=self._run, name="rehearsal-lock-sampler",
                                        daemon=True)
        self._thread.start()

    def start(self, pid: int) -> None:
        with self._condition:
            self._pid, self._seen = pid, {}
            self._busy = self._running = True
            self._condition.notify_all()

    def stop(self) -> dict[tuple[Any, str | None, str], float]:
        """Stop sampling; what was seen, with when each lock was first seen."""
        with self._condition:
            self._running = False
            while self._busy:
                self._condition.wait()
            return self._seen

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        cursor = self._connection.driver_connection.cursor()
        while True:
            with self._condition:
                while not self._busy and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                query = _OWN_LOCKS_SQL.format(pid=int(self._pid))
            while True:
                with self._condition:
                    # Closed while sampling: Ctrl-C ended the statement before its events.
                    if not self._running or self._closed:
                        self._busy = False
                        self._condition.notify_all()
                        break
                now = time.perf_counter()
                for row in cursor.execute(query).fetchall():
                    self._seen.setdefault(tuple(row), now)
                time.sleep(SAMPLE_INTERVAL)


def sampler(engine) -> _Sampler:
    """A started lock sampler on a connection of its own; `close()` it."""
    return _Sampler(engine)
