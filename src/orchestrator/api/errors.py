"""Error responses: input errors that render whatever the request held, and overload as 503.

FastAPI's 422 echoes the offending input; a lone UTF-16 surrogate in it (valid in JSON's
`\\ud800` escapes, not encodable as UTF-8) would turn the 422 into a 500 while rendering. Here
such characters are written back as their escape text instead.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def add_error_handlers(app: FastAPI) -> None:
    """Install the API's exception handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _busy)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _operational_error)


async def _busy(_request: Request, _exc: Exception) -> JSONResponse:
    # More requests wait for the database than it serves in time (for SQLite, for its one
    # writer): an overload to retry, not a fault.
    return JSONResponse(
        {"detail": "the database is busy; retry shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


async def _operational_error(request: Request, exc: Exception) -> JSONResponse:
    if "database is locked" in str(exc):  # SQLite's busy_timeout ran out
        return await _busy(request, exc)
    raise exc


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = _encodable(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value
