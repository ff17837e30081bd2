"""Shared dependencies of the routes: the engine, a session per request, the caller, paging.

The engine is made in the app's lifespan (`create_api_engine`) and kept on `app.state.engine`.
Requests that may write open their SQLite transaction with BEGIN IMMEDIATE, so concurrent
writers queue on the write lock (within busy_timeout) instead of failing when a read lock cannot
be upgraded; PostgreSQL needs nothing of the kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

from orchestrator.accounts import user_for_token
from orchestrator.api.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_ID,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    Page,
    Problem,
)
from orchestrator.db import backend_name, create_engine
from orchestrator.models import User

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Enough connections for the server's worker threads (AnyIO's default limiter is 40), so a
# burst of requests waits on the database rather than on the pool.
_POOL_SIZE = 20
_MAX_OVERFLOW = 20

_bearer = HTTPBearer(auto_error=False, description="An API token from `orchestrator users create`.")


def create_api_engine(database_url: str) -> Engine:
    """The engine the API serves requests from."""
    return create_engine(database_url, pool_size=_POOL_SIZE, max_overflow=_MAX_OVERFLOW)


def get_session(request: Request) -> Iterator[Session]:
    """A session for this request; routes commit what they change, the rest is rolled back."""
    engine: Engine = request.app.state.engine
    with Session(engine, expire_on_commit=False) as session:
        if request.method not in _READ_ONLY_METHODS and backend_name(engine.url) == "sqlite":
            session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The user whose bearer token came with the request; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send an API token: `Authorization: Bearer <token>`")
    try:
        user = user_for_token(session, credentials.credentials)
    except DBAPIError as exc:
        # Unreachable or not yet migrated (no api_tokens table): say so instead of a 500.
        session.rollback()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the database is not ready; see /health/ready",
        ) from exc
    if user is None:
        raise _unauthorized("unknown or revoked API token")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


# -- parameters shared by the routes ------------------------------------------------------


# A path id: positive and small enough for a 32-bit column (422 otherwise).
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"At most {MAX_PAGE_SIZE} items.")
    ] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> PageParams:
    """The `limit` and `offset` query parameters of every list."""
    return PageParams(limit, offset)


PageDep = Annotated[PageParams, Depends(page_params)]


def page_of(session: Session, statement: Select, params: PageParams, schema: type[BaseModel]) -> Page:
    """One page of `statement` (which must be ordered deterministically) as `Page[schema]`."""
    rows = session.scalars(statement.limit(params.limit + 1).offset(params.offset)).all()
    more = len(rows) > params.limit
    return Page[schema](
        items=[schema.model_validate(row) for row in rows[: params.limit]],
        limit=params.limit,
        offset=params.offset,
        next_offset=params.offset + params.limit if more else None,
    )


def not_found(kind: str, id_: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{kind} {id_} not found")


def problems(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for the error responses a route can give."""
    descriptions = {
        400: "The body is not valid JSON",
        401: "No valid API token",
        403: "Not allowed for this user",
        404: "Unknown id",
        409: "Conflicts with the current state",
    }
    return {code: {"model": Problem, "description": descriptions[code]} for code in codes}
