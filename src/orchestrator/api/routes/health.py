"""Liveness, readiness and schema status. Never shows the database URL."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orchestrator.api.deps import CurrentUser
from orchestrator.migrations import MigrationError

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "alive"}


@router.get("/ready")
def ready(request: Request) -> JSONResponse:
    """200 when the database is reachable and at head; 503 with the reason otherwise."""
    schema, problem = _schema(request)
    if problem is None and not schema["up_to_date"]:
        problem = (
            f"schema is at {schema['current'] or 'base'}, head is {schema['head']}; "
            "run `orchestrator db upgrade`"
        )
    if problem is not None:
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("", responses={401: {"description": "No valid API token"}})
def health(request: Request, _: CurrentUser) -> dict:
    """Environment and schema status: current, head, pending, up to date (needs a token)."""
    schema, problem = _schema(request)
    body = {"environment": request.app.state.settings.environment.value, "schema": schema}
    if problem is not None:
        body["problem"] = problem
    return body


def _schema(request: Request) -> tuple[dict, str | None]:
    try:
        status = request.app.state.migrations.status()
    except MigrationError as exc:
        return {"current": None, "head": None, "pending": [], "up_to_date": False}, str(exc)
    body = {
        "current": status.current,
        "head": status.head,
        "pending": list(status.pending),
        "up_to_date": status.up_to_date,
    }
    if status.ahead:
        return body, f"the database is at {status.current}, which this code does not know"
    return body, None
