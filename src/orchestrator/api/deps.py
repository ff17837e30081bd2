"""Shared dependencies of the routes: the database, a session per request, the caller, errors.

The engines are made in the app's lifespan (`open_database`) and kept on `app.state.db`.

- The caller's token is checked on a connection of its own, before the route's transaction
  begins (on PostgreSQL in autocommit: one round trip).
- On PostgreSQL, a claim's one statement runs on the event loop (`statements`,
  `orchestrator.api.aio`); everything else runs in the thread pool on the engines.
- Requests that may write use the writer engine. On SQLite it has a single connection whose
  transactions begin IMMEDIATE: writers queue for it in the process, in order, instead of
  polling the file lock (which makes some wait for seconds) or failing when a read lock cannot
  be upgraded. On PostgreSQL the writer is the same engine as the reader.
- Every SQLite write transaction begins and ends within one call to the thread pool or is
  rolled back on the event loop, so a request never holds the write lock while it waits for a
  worker thread that the queued writers occupy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy.exc
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from orchestrator.accounts import (
    Caller,
    caller_for_token,
    record_token_use,
    token_use_is_stale,
)
from orchestrator.api.aio import AsyncStatements
from orchestrator.api.errors import NOT_READY, RETRY_AFTER, database_problem
from orchestrator.api.schemas import MAX_ID, Problem
from orchestrator.db import create_engine

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Enough connections for the server's worker threads (AnyIO's default limiter is 40), so a
# burst of requests waits on the database rather than on the pool.
_POOL_SIZE = 20
_MAX_OVERFLOW = 20
# The claim connections run one statement, thousands of times: planned once per connection.
# Left to choose, PostgreSQL plans it again on every execution (a custom plan's estimate beats
# the generic plan's), which cost more of the database's CPU than running it; and with
# 1,000,000 tasks among 1,000 users, the custom plan for a user with nothing pending walked
# every pending task of every user (1.2 s), where the generic plan starts from the user's
# projects (1.3 ms). docs/benchmarks.md has the figures.
_CLAIM_CONNECTION_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
# How long a SQLite writer waits for its turn before the request fails.
_SQLITE_WRITER_TIMEOUT = 30

_bearer = HTTPBearer(auto_error=False, description="An API token from `orchestrator users create`.")


@dataclass(frozen=True)
class Database:
    """The engines the API serves requests from."""

    reader: Engine
    writer: Engine
    # Token look-ups: the reader, in autocommit on PostgreSQL.
    auth: Engine
    # Recording a token's use (once a minute at most): `auth` on PostgreSQL. On SQLite a
    # connection of its own that never waits for the file's write lock: a request whose
    # token's use cannot be recorded at once leaves it to a later one.
    touch: Engine
    # PostgreSQL: async connections for the statement that claims a task (None on SQLite,
    # whose claims queue for the one writer connection anyway).
    statements: AsyncStatements | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.reader.dialect.name == "sqlite"

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.reader.dispose()
        self.writer.dispose()
        self.touch.dispose()

    async def aclose(self) -> None:
        """`dispose`, and close the async connections too."""
        if self.statements is not None:
            await self.statements.close()
        self.dispose()


def open_database(database_url: str) -> Database:
    """The API's engines for `database_url` (nothing connects until the first request)."""
    reader = create_engine(database_url, pool_size=_POOL_SIZE, max_overflow=_MAX_OVERFLOW)
    if reader.dialect.name != "sqlite":
        auth = reader.execution_options(isolation_level="AUTOCOMMIT")
        return Database(reader, reader, auth, auth, AsyncStatements(
            reader, _POOL_SIZE, settings=_CLAIM_CONNECTION_SETTINGS
        ))
    writer = create_engine(
        database_url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=_SQLITE_WRITER_TIMEOUT,
        execution_options={"sqlite_begin": "BEGIN IMMEDIATE"},
    )
    touch = create_engine(
        database_url, pool_size=1, max_overflow=0, pool_timeout=0,
        execution_options={"sqlite_begin": "BEGIN IMMEDIATE"},
    )
    event.listen(touch, "connect", _never_wait)
    return Database(reader, writer, reader, touch)


def _never_wait(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=0")


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for this request; routes commit what they change, the rest is rolled back.

    Async on purpose: making a session does no I/O (it connects on first use, in the route's
    worker thread), and every trip to the thread pool costs the event loop more CPU than a
    simple query does.
    """
    db: Database = request.app.state.db
    engine = db.reader if request.method in _READ_ONLY_METHODS else db.writer
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction() and not db.is_sqlite:
            await run_in_threadpool(session.close)
        else:
            # No transaction left (nothing to send), or a local SQLite rollback: done here
            # rather than by waiting for a worker thread while holding the write lock.
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]


# The request's `Authorization: Bearer ...` header, if any (no I/O; documents the scheme).
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_user(request: Request, credentials: BearerToken) -> Caller:
    """The user whose bearer token came with the request; 401 without a valid one.

    A plain record, not an ORM object: a route that changes the user loads it itself.
    """
    return authenticate(request.app.state.db, credentials)


def authenticate(db: Database, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """`get_current_user` for a route that does all its database work in one thread call."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send an API token: `Authorization: Bearer <token>`")
    try:
        with db.auth.connect() as connection:
            caller = caller_for_token(connection, credentials.credentials)
            connection.commit()
        if caller is not None:
            record_use_if_stale(db, caller.token_id, caller.token_last_used_at)
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError) as exc:
        # Unreachable, busy, or not migrated yet (no api_tokens table): a 503, not a 500.
        problem = database_problem(exc)
        if problem is None or problem.status_code != 503:
            problem = NOT_READY
        raise HTTPException(
            problem.status_code, problem.detail, headers={"Retry-After": RETRY_AFTER}
        ) from exc
    if caller is None:
        raise _unauthorized("unknown or revoked API token")
    return caller


CurrentUser = Annotated[Caller, Depends(get_current_user)]


def record_use_if_stale(db: Database, token_id: int, last_used_at: dt.datetime | None) -> None:
    """Record that a request used the token, unless one did within the last minute.

    Best effort: when it cannot be written at once (SQLite's write lock is taken, another
    request is recording a use, the database is busy) a later request records it. It never
    fails the request, which may already have claimed a task.
    """
    if not token_use_is_stale(last_used_at):
        return
    with contextlib.suppress(sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError):
        with db.touch.begin() as connection:
            record_token_use(connection, token_id)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


# -- parameters shared by the routes ------------------------------------------------------


# A path id: positive and small enough for a 32-bit column (422 otherwise).
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


def save(session: Session, row: object) -> None:
    """Commit the changes to `row`, having read back the columns the database set on update.

    Reading them after the commit would open another transaction that outlives the route
    (on SQLite, holding the writer connection while the response is validated).
    """
    session.flush()
    session.refresh(row, ["updated_at"])
    session.commit()


def not_found(kind: str, id_: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{kind} {id_} not found")


def lock_for_share(statement: Any) -> Any:
    """`statement` taking a share lock on the rows it reads (PostgreSQL; SQLite has one writer).

    A row read this way cannot be deleted or changed by another transaction until this one
    ends, and a transaction changing it makes this one wait and then read the new version.
    """
    return statement.with_for_update(read=True)


_PROBLEMS: dict[int, str] = {
    400: "The body is not valid JSON (bad syntax, not UTF-8, nested too deeply, or a number "
    "with too many digits)",
    401: "No valid API token",
    403: "Not allowed for this user",
    404: "Unknown id",
    409: "Conflicts with the current state, or with a change made at the same time",
    503: "The database is busy, not ready (not migrated, or its schema is changing) or "
    "unreachable; retry after `Retry-After` seconds",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "required": True,
            "schema": {"type": "string"},
        }
    },
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error responses a route can give, each with its headers."""
    entries: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entries[code] = {"model": Problem, "description": _PROBLEMS[code]}
        if code in _HEADERS:
            entries[code]["headers"] = _HEADERS[code]
    return entries


# Every /api/v1 route: a token is needed, and the database may be busy or not ready.
API_PROBLEMS = problems(401, 503)
# Every route that takes a JSON body.
BODY_PROBLEMS = problems(400)
