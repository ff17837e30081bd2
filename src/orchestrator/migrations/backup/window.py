"""The exclusive restore window on PostgreSQL: one session of ours that locks every table of the
database, takes the snapshot the safety dump is made at, and restores the backup in the same
transaction; a watcher (its own session) ends whatever is in the way, or gives up.

Why one session that locks every table, and not a setting that keeps other sessions out:
- `ALTER DATABASE … SET default_transaction_read_only = on` is a default: a session that says
  `SET default_transaction_read_only = off`, `BEGIN READ WRITE` or `SET SESSION
  CHARACTERISTICS AS TRANSACTION READ WRITE` still commits (an operator's trial lost writes so);
- `ALLOW_CONNECTIONS false` keeps everyone out, superusers and our own pg_dump included, and
  if the tool is killed it stays so; `CONNECTION LIMIT` and `REVOKE CONNECT` bind neither the
  owner nor a superuser.
A SHARE lock on a table lets others read it and nobody else write it, whatever their
settings; pg_dump's ACCESS SHARE locks go with it. The lock is taken before the transaction's
snapshot (LOCK does not take one), so the safety dump, made at that snapshot, holds every
commit made before, and none can be made after until the restore, run in the same
transaction, commits. Writers wait meanwhile (or are ended, getting an error), then write into
the restored database. Nothing outlives the session: if the tool is killed, the transaction
is rolled back and the database is as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from orchestrator.db import is_secret_parameter, mask_url
from orchestrator.migrations import version
from orchestrator.migrations.backup import limits
from orchestrator.migrations.backup.identity import without_secrets
from orchestrator.migrations.backup.info import BackupInfo, Notify, Progress
from orchestrator.migrations.backup.pgtools import (
    READ_WRITE,
    archive_listing,
    first_error,
    libpq,
    run_tool,
    tool,
)
from orchestrator.migrations.errors import BackupError, first_line

# Schemas of the database's own objects (nor the catalogs, nor pg_toast and pg_temp_N).
_USER_SCHEMA = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
)
# Client sessions of the database other than ours. A role sees little of another role's
# sessions (no type without pg_read_all_stats): those are taken as clients; background workers
# (autovacuum) have no user.
_OTHER_SESSIONS = """
SELECT pid, coalesce(nullif(application_name, ''), usename) FROM pg_stat_activity
WHERE datname = current_database() AND application_name IS DISTINCT FROM %(tag)s
  AND pid <> ALL(%(spare)s) AND usename IS NOT NULL
  AND coalesce(backend_type, 'client backend') = 'client backend'
ORDER BY pid
"""
# Sessions in the way of one of ours: holding a lock one of ours waits for, or waiting for
# one ahead of it.
_BLOCKERS = """
SELECT DISTINCT b.pid, coalesce(nullif(b.application_name, ''), b.usename, 'a session')
FROM pg_stat_activity a CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
WHERE a.datname = current_database() AND a.application_name = %(tag)s
  AND b.application_name IS DISTINCT FROM %(tag)s AND b.pid <> ALL(%(spare)s)
ORDER BY 1
"""
# The tables to lock: every table of the user schemas (a partitioned table locks its
# partitions).
_USER_TABLES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER_SCHEMA}
ORDER BY 1
"""

# Tables, views, sequences, types and routines in user schemas, except those that belong to an
# extension or live and die with a column (serial and identity sequences); with the name to
# drop each by (a routine's includes its arguments). An overload of a routine whose name the
# archive has is kept: archives list routines by name and arguments in a form not worth parsing.
_USER_OBJECTS = f"""
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
       WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype IN ('e', 'a', 'i'))
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname,
       quote_ident(n.nspname) || '.' || quote_ident(t.typname)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd', 'r') AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
       n.nspname, p.proname,
       quote_ident(n.nspname) || '.' || quote_ident(p.proname)
       || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p', 'a') AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1 DESC
"""
# The archive's table of contents: what it makes, and so what a restore keeps.
_TOC_ENTRY = re.compile(
    r"^\d+; \d+ \d+ (?P<kind>MATERIALIZED VIEW|FOREIGN TABLE|TABLE|VIEW|SEQUENCE|TYPE|DOMAIN) "
    r"(?P<schema>\S+) (?P<name>\S+) \S*$"
)
# Functions are listed with their arguments, which may hold spaces: "add(integer, integer)".
_TOC_ROUTINE = re.compile(
    r"^\d+; \d+ \d+ (?:FUNCTION|PROCEDURE|AGGREGATE) (?P<schema>\S+) (?P<name>[^\s(]+)\("
)
# psql meta-commands pg_restore writes around a plain script (15.14 and later): a guard for
# psql, nothing to run.
_GUARD_COMMANDS = (b"\\restrict ", b"\\unrestrict ")
# Bytes of COPY data sent to the server at once.
_COPY_CHUNK = 1024 * 1024


class Window:
    """One session of ours that locks every table of the database (SHARE: others read, nobody
    else writes), exports its snapshot for the safety dump, and restores the backup in the same
    transaction. Sessions present at the start are ended, saying so; meanwhile a watcher (its
    own session) ends any session in the way of ours, or, where this role may not end it,
    waits for it up to the busy timeout and then stops the restore."""

    def __init__(self, database_url: str, notify: Notify, spare: Iterable[int]) -> None:
        self.database_url = database_url
        self.notify = notify
        self.spare = list(spare)
        # Every session of ours has this name, pg_dump's included: an operator looking at
        # pg_stat_activity knows who holds the window.
        self.tag = f"orchestrator-restore {socket.gethostname()} pid {os.getpid()}"
        self.snapshot: str | None = None
        self.failure: BackupError | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> Window:
        self._tools = contextlib.ExitStack()
        self._conninfo, self._env = self._tools.enter_context(libpq(self.database_url))
        self._env["PGAPPNAME"] = self.tag
        # Our own sessions take the secrets as arguments (libpq reads the environment of this
        # process, not the one made for the tools); the connection string has none.
        url = make_url(self.database_url)
        conninfo = without_secrets(url, query=True)
        secret = {key: value if isinstance(value, str) else value[-1]
                  for key, value in url.query.items() if is_secret_parameter(key)}
        if url.password is not None:
            secret["password"] = url.password
        try:
            self.session = psycopg.connect(conninfo, autocommit=True, connect_timeout=10,
                                           options=READ_WRITE, application_name=self.tag,
                                           **secret)
            self.watch = psycopg.connect(conninfo, autocommit=True, connect_timeout=10,
                                         application_name=self.tag, **secret)
        except psycopg.Error as exc:
            self.__exit__(None, None, None)
            raise BackupError(
                f"cannot restore {mask_url(self.database_url)}: {first_line(exc)}; check "
                "DATABASE_URL and that the server is running"
            ) from None
        self._watcher = threading.Thread(target=self._watch, name="restore-watcher", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        for name in ("session", "watch"):
            connection = getattr(self, name, None)
            if connection is not None:
                connection.close()  # an open transaction is rolled back
        self._tools.close()

    # -- the lock -----------------------------------------------------------------------------

    def lock(self) -> None:
        """End the other sessions, then lock every table and take the snapshot."""
        try:
            self._end_others()
            while True:
                tables = [row[0] for row in self.session.execute(_USER_TABLES)]
                self.session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                if tables:
                    self.session.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE")
                # The snapshot is taken here, after the locks: a table made meanwhile, which
                # no lock holds, shows now; lock it too.
                if [row[0] for row in self.session.execute(_USER_TABLES)] == tables:
                    break
                self.session.execute("ROLLBACK")
            self.snapshot = self.session.execute("SELECT pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            raise BackupError(
                f"cannot restore {mask_url(self.database_url)}: locking its tables for the "
                f"restore's duration failed ({first_line(exc)}); restore as the database's "
                "owner or a superuser, with the server running"
            ) from None

    def _end_others(self) -> None:
        found = self.watch.execute(_OTHER_SESSIONS, {"tag": self.tag, "spare": self.spare})
        found = [tuple(row) for row in found]
        if not found:
            return
        self.notify(f"ending {len(found)} other session{'s' * (len(found) != 1)} of the "
                    f"database ({_describe(found)}); they cannot write until the restore is "
                    "done")
        for pid, _who in found:
            self._terminate(pid)

    def _terminate(self, pid: int) -> bool:
        try:
            self.watch.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.Error:  # another role's session, which this one may not end
            return False
        return True

    def _watch(self) -> None:
        """End whatever is in the way of our sessions; give up on what cannot be ended."""
        refused: dict[int, float] = {}
        while not self._stop.wait(limits.POLL_SECONDS):
            try:
                blockers = [tuple(row) for row in self.watch.execute(
                    _BLOCKERS, {"tag": self.tag, "spare": self.spare})]
            except psycopg.Error:  # pragma: no cover - the watcher's session was cut
                return
            waiting = [(pid, who) for pid, who in blockers
                       if pid in refused or not self._terminate(pid)]
            for pid, who in waiting:
                if pid not in refused:
                    refused[pid] = time.monotonic()
                    self.notify(f"waiting for {who} pid {pid}, which holds a lock the restore "
                                "needs (this role may not end it; up to "
                                f"{limits.BUSY_TIMEOUT:g}s)")
            if any(time.monotonic() - refused[pid] > limits.BUSY_TIMEOUT for pid, _ in waiting):
                self.failure = BackupError(
                    f"{_describe(waiting)} held a lock the restore needs for more than "
                    f"{limits.BUSY_TIMEOUT:g}s (another role's session, which this one may not "
                    "end); stop it (or the API), or restore as a superuser, then restore again"
                )
                # Our statements (and pg_dump's) are cancelled: the transaction rolls back.
                self.watch.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %(tag)s AND pid <> pg_backend_pid()",
                    {"tag": self.tag})
                return

    # -- the safety dump and the restore ------------------------------------------------------

    def dump(self, path: Path) -> str | None:
        """The safety backup: pg_dump at the window's snapshot. Returns its revision."""
        revision = version.read_revision(version.dbapi_rows(self.session), "postgresql")
        command = [tool("pg_dump"), "--format=custom", "--no-password",
                   f"--snapshot={self.snapshot}", f"--file={path}", f"--dbname={self._conninfo}"]
        run_tool(command, self._env, self.database_url)
        return revision

    def restore(self, path: Path, progress: Progress | None) -> None:
        """Drop what was made after the backup, run the archive as pg_restore writes it out,
        and commit: all in the window's one transaction."""
        in_archive = {
            (match["schema"], match["name"])
            for line in archive_listing(self.database_url, path).splitlines()
            if (match := _TOC_ENTRY.match(line) or _TOC_ROUTINE.match(line))
        }
        try:
            for kind, schema, name, qualified in self.session.execute(_USER_OBJECTS).fetchall():
                if (schema, name) not in in_archive:
                    self.session.execute(f"DROP {kind} IF EXISTS {qualified} CASCADE")
            self._run_archive(path, progress)
            self.session.execute("COMMIT")
        except psycopg.Error as exc:
            raise BackupError(
                f"the restore failed for {mask_url(self.database_url)}: "
                f"{first_error(str(exc), self.database_url)}"
            ) from None

    def _run_archive(self, path: Path, progress: Progress | None) -> None:
        """pg_restore writes the archive out as SQL (no connection of its own); each statement
        runs here, and each table's COPY data goes to the server as it comes."""
        total = path.stat().st_size
        with open(path, "rb") as archive, tempfile.TemporaryFile() as errors:
            # It only reads the archive and writes SQL: no connection, no secret.
            process = subprocess.Popen(
                [tool("pg_restore"), "--clean", "--if-exists", "--file=-"],
                stdin=archive, stdout=subprocess.PIPE, stderr=errors)
            try:
                self._run_script(process.stdout, lambda: progress(
                    os.lseek(archive.fileno(), 0, os.SEEK_CUR), total) if progress else None)
            except BaseException:  # we stopped reading: it has to go
                process.kill()
                raise
            finally:
                process.wait()
                process.stdout.close()
            if process.returncode != 0:
                errors.seek(0)
                reason = first_error(errors.read().decode(errors="replace"), self.database_url)
                raise BackupError(f"pg_restore failed for {mask_url(self.database_url)}: {reason}")

    def _run_script(self, script, poll: Callable[[], object]) -> None:
        """Run a plain pg_restore script: its statements in batches (each batch one query),
        each COPY's data streamed to the server in chunks as it is read."""
        statements: list[bytes] = []
        copying = None  # the open COPY, while its data lines come
        data = bytearray()
        polled = 0.0  # the first line is reported: pg_restore is running then

        def run_statements() -> None:
            # ";" ends the last statement; alone (nothing was pending) it is an empty query.
            self.session.execute(b"".join(statements).decode() + ";")
            statements.clear()

        with contextlib.ExitStack() as stack:
            for line in script:
                if copying is not None:
                    if line != b"\\.\n":
                        data += line
                        if len(data) >= _COPY_CHUNK:
                            copying.write(bytes(data))
                            data.clear()
                        continue
                    copying.write(bytes(data))
                    data.clear()
                    stack.close()  # the COPY ends
                    copying = None
                elif line.startswith(_GUARD_COMMANDS):
                    continue
                elif line.startswith(b"COPY ") and line.rstrip().endswith(b" FROM stdin;"):
                    run_statements()
                    cursor = stack.enter_context(self.session.cursor())
                    copying = stack.enter_context(cursor.copy(line.rstrip()[:-1].decode()))
                else:
                    statements.append(line)
                if time.monotonic() - polled > limits.POLL_SECONDS:
                    poll()
                    polled = time.monotonic()
        run_statements()
        poll()

    def not_restored(self, failure: BaseException, safety: BackupInfo | None) -> BaseException:
        """What to raise when the restore failed or was stopped: its transaction was rolled
        back, so the database is as it was."""
        kept = f" (its state before the restore is also in {safety.path})" if safety else ""
        done = f"nothing was restored: the database is as it was{kept}"
        if isinstance(failure, BackupError):
            return type(failure)(f"{failure}; {done}")
        # Ctrl-C (or a bug): raised again as it is, once what it did is told.
        self.notify(f"the restore was stopped ({type(failure).__name__}); {done}")
        return failure


def _describe(sessions: list[tuple[int, str]]) -> str:
    shown = ", ".join(f"{who} pid {pid}" for pid, who in sessions[:5])
    return shown + (f" and {len(sessions) - 5} more" if len(sessions) > 5 else "")
