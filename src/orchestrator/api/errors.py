"""Error responses: every answer is JSON, and nothing a client sends or a concurrent change
does is a 500.

- A body that cannot be read as JSON (bad syntax, not UTF-8, nested too deeply, a number too
  long to read) is a 400; JSON that is not what the route takes is FastAPI's 422. The 422
  echoes the offending input, made safe to encode first: JSON may carry NaN, Infinity, 1e400,
  lone UTF-16 surrogates and deep nesting, none of which a JSON reply can hold.
- Database errors that another request, an operator or the server can cause are sorted by
  `database_problem` into a conflict (409), a busy database (503) or one that is not ready or
  not reachable (503); every 503 carries `Retry-After`.
- Anything else is a bug: a 500 with a JSON body, and the traceback in the server's log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.migrations.errors import Fault, classify, first_line

logger = logging.getLogger("orchestrator.api")

# How much of a bad input a 422 echoes back: enough to recognise it, never the whole of a
# megabyte body or a structure nested a thousand deep.
_ECHO_DEPTH = 8
_ECHO_ITEMS = 20
_ECHO_TEXT = 200
# Seconds a client should wait before retrying a 503.
RETRY_AFTER = "1"
# FastAPI's own words for a body it could not read (other than a JSON syntax error).
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def add_error_handlers(app: FastAPI) -> None:
    """Install the API's exception handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, _database_error)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _database_error)
    app.add_exception_handler(Exception, _internal_error)


# -- database errors ----------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseProblem:
    """What a database error means for the client: the status and the `detail` to answer."""

    status_code: int
    detail: str

    def response(self) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER} if self.status_code == 503 else None
        return JSONResponse({"detail": self.detail}, self.status_code, headers=headers)


BUSY = DatabaseProblem(503, "the database is busy; retry shortly")
NOT_READY = DatabaseProblem(
    503, "the database is not ready (its schema is not the one this code needs); see /health/ready"
)
UNAVAILABLE = DatabaseProblem(
    503, "the database is unavailable; retry shortly, or see /health/ready"
)

# What each kind of driver failure (`orchestrator.migrations.errors.classify`) means to a client.
_ANSWERS = {
    Fault.TRANSIENT: BUSY,
    Fault.LOCK_TIMEOUT: BUSY,
    Fault.CANCELED: BUSY,  # statement_timeout
    Fault.MISSING_SCHEMA: NOT_READY,
    Fault.ENDED: UNAVAILABLE,
    Fault.UNAVAILABLE: UNAVAILABLE,
    Fault.STORAGE: UNAVAILABLE,
    Fault.DAMAGED: UNAVAILABLE,
}


def database_problem(exc: BaseException) -> DatabaseProblem | None:
    """The client's answer for a database error that is not a bug here, or None for one that is.

    Database errors are recognised by the migration core's `classify` (by SQLSTATE or SQLite's
    result code): constraint violations that a concurrent change caused, busy or locked
    databases, a schema changed under the running server (a downgrade), a lost connection.
    """
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no pooled connection came free in time
        return BUSY
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return None
    fault = classify(exc)
    if fault is Fault.CONFLICT:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        return _conflict(constraint)
    return _ANSWERS.get(fault)


def _conflict(constraint: str | None) -> DatabaseProblem:
    which = f" ({constraint})" if constraint else ""
    return DatabaseProblem(
        409,
        f"another request changed the data this one depends on at the same time{which}; "
        "read the current state and retry",
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    problem = database_problem(exc)
    if problem is None:
        raise exc  # a bug: the 500 handler answers, and the traceback is logged
    logger.info("%s %s answered %d: %s", request.method, request.url.path,
                problem.status_code, _first_line(exc))
    return problem.response()


def _first_line(exc: BaseException) -> str:
    return first_line(exc) or type(getattr(exc, "orig", None) or exc).__name__


# -- bad input ----------------------------------------------------------------------------


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    unreadable = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if unreadable is not None:
        loc = unreadable.get("loc", ())
        where = f" at position {loc[-1]}" if len(loc) > 1 else ""
        reason = (unreadable.get("ctx") or {}).get("error", "JSON decode error")
        return _bad_body(f"{reason}{where}")
    detail = [_safe_error(error) for error in errors]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
        return _bad_body(_unreadable_reason(exc.__cause__))
    return await http_exception_handler(request, exc)


def _unreadable_reason(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number in it has too many digits"
    return "it cannot be read"


def _bad_body(reason: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the body is not valid JSON: {reason}; send a JSON object"},
        status_code=status.HTTP_400_BAD_REQUEST,
    )


def _safe_error(error: dict[str, Any]) -> dict[str, Any]:
    safe = {key: value for key, value in error.items() if key not in ("input", "ctx")}
    safe["loc"] = [item if isinstance(item, int) else _safe(item) for item in error["loc"]]
    safe["msg"] = _safe(error["msg"])
    if "input" in error:
        safe["input"] = _safe(error["input"])
    if "ctx" in error:
        safe["ctx"] = _safe(error["ctx"])
    return safe


def _safe(value: Any, depth: int = 0) -> Any:
    """`value` as JSON can carry it: finite numbers, encodable text, bounded size and depth."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        # A lone surrogate ("\ud800" in JSON) cannot be encoded as UTF-8: write its escape.
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= _ECHO_TEXT else text[:_ECHO_TEXT] + "…"
    if isinstance(value, bytes):
        return _safe(value.decode("utf-8", "backslashreplace"), depth)
    if depth >= _ECHO_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:_ECHO_ITEMS]
        return {str(_safe(str(key))): _safe(item, depth + 1) for key, item in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [_safe(item, depth + 1) for item in list(value)[:_ECHO_ITEMS]]
    # Anything else (an exception in `ctx`, a Decimal): its text is what helps.
    return _safe(str(value), depth)


# -- bugs ---------------------------------------------------------------------------------


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback after this response is sent.
    logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(
        {"detail": "internal error; the server's log has the details"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )

