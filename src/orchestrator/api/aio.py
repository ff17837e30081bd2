"""Connections that run a statement on the event loop itself: the claim's hot path on PostgreSQL.

Agents claim in a loop, and a claim that succeeds is one statement (`routes/agents.py`). Run
through the synchronous engine it costs the server a trip to the thread pool (a hand-off to a
worker thread and back, with the GIL changing hands), a pooled connection checkout and
SQLAlchemy's execution machinery: measured, a claim cost the server about twice the CPU of a
request to its HTTP floor (docs/benchmarks.md). Here the statement is sent from the event loop on
a psycopg `AsyncConnection` in autocommit (a prepared statement after a few uses): while the
database works, the loop serves other requests, and no thread is involved.

Only that statement runs here. Everything else (an unknown token, nothing to claim, SQLite)
takes the usual synchronous path. Errors are raised as SQLAlchemy's `DBAPIError`s, so the app's
handlers answer them as they answer any database error (a 503 with `Retry-After` for a database
that is busy, not ready or gone); a connection that failed is closed, never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psycopg
import sqlalchemy.exc
from psycopg.rows import dict_row
from sqlalchemy.engine import Engine


class AsyncStatements:
    """Up to `size` psycopg async connections to `engine`'s database, opened on first use,
    each used by one statement at a time."""

    def __init__(
        self, engine: Engine, size: int, settings: Mapping[str, str] | None = None
    ) -> None:
        # The same arguments the engine connects with (host, user, password, options...).
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        self._args = tuple(args)
        self._kwargs = dict(kwargs)
        # Run-time parameters set on each new connection (`SET name = value`).
        self._settings = dict(settings or {})
        self._size = size
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def fetch_one(self, sql: str, parameters: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run `sql` (psycopg's `%(name)s` placeholders) in autocommit; its first row, or None."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            try:
                if connection is None:
                    connection = await psycopg.AsyncConnection.connect(
                        *self._args, **self._kwargs, autocommit=True, row_factory=dict_row
                    )
                    for name, value in self._settings.items():
                        await connection.execute(
                            "SELECT set_config(%s, %s, false)", (name, value)
                        )
                # Prepared from the fifth use on, as the engine's connections are (psycopg's
                # `prepare_threshold`, which the database URL may change).
                cursor = await connection.execute(sql, parameters)
                row = await cursor.fetchone()
            except BaseException as exc:
                # Whatever happened (a lost connection, an error, a cancelled request with
                # the statement in flight), this connection's state is unknown: close it.
                invalidated = connection is None or connection.broken
                if connection is not None:
                    await _close(connection)
                if isinstance(exc, psycopg.Error):
                    raise sqlalchemy.exc.DBAPIError.instance(
                        sql, parameters, exc, psycopg.Error,
                        connection_invalidated=invalidated,
                    ) from exc
                raise
            if self._closed:
                await _close(connection)
            else:
                self._idle.append(connection)
            return row

    async def close(self) -> None:
        """Close the idle connections; those in use close when their statement ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await _close(connection)


async def _close(connection: psycopg.AsyncConnection) -> None:
    try:
        await connection.close()
    except (psycopg.Error, OSError):
        pass
