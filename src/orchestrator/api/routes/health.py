"""Liveness, readiness and schema status.

`/health/live` and `/health/ready` answer anyone (load balancers, orchestrators), so they say
only whether the service is up and ready, and if not a short reason code: never the database's
host, port, user or name, nor its revisions. The details are logged when the reason changes
and shown, with a token, on `/health`.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.api.deps import CurrentUser, problems
from orchestrator.api.schemas import HealthDetail, Liveness, NotReady, Readiness, SchemaState
from orchestrator.migrations import DatabaseUnreachableError, MigrationError

router = APIRouter(prefix="/health", tags=["health"])
logger = logging.getLogger("orchestrator.api")


@router.get("/live")
def live() -> Liveness:
    """200 while the process runs."""
    return Liveness(status="alive")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": "Not ready; `reason` says why, as a code"}},
)
def ready(request: Request) -> Response:
    """200 when the database is reachable and at head; 503 with a reason code otherwise."""
    reason, _schema, _problem = _check(request)
    if reason is not None:
        return JSONResponse(NotReady(reason=reason).model_dump(), status_code=503)
    return JSONResponse(Readiness(status="ready").model_dump())


@router.get("", responses=problems(401, 503))
def health(request: Request, _: CurrentUser) -> HealthDetail:
    """Environment and schema status, and what is wrong if anything is (needs a token)."""
    reason, schema, problem = _check(request)
    return HealthDetail(
        environment=request.app.state.settings.environment.value,
        schema=schema,
        reason=reason,
        problem=problem,
    )


def _check(request: Request) -> tuple[str | None, SchemaState, str | None]:
    """(reason code or None when ready, the schema's state, the problem in words)."""
    unknown = SchemaState(current=None, head=None, pending=[], up_to_date=False)
    try:
        status = request.app.state.migrations.status()
    except DatabaseUnreachableError as exc:
        return _note(request, "database_unreachable", unknown, str(exc))
    except MigrationError as exc:
        return _note(request, "migrations_unusable", unknown, str(exc))
    except Exception as exc:  # a probe answers 503, whatever went wrong
        logger.exception("the readiness check failed")
        return _note(request, "check_failed", unknown, f"{type(exc).__name__}: {exc}")
    schema = SchemaState(
        current=status.current,
        head=status.head,
        pending=list(status.pending),
        up_to_date=status.up_to_date,
    )
    if status.ahead:
        return _note(request, "database_ahead", schema,
                     f"the database is at {status.current}, which this code does not know")
    if status.unversioned:
        return _note(request, "database_unversioned", schema,
                     "the database has tables but no migration revision; "
                     "see `orchestrator db stamp`")
    if not status.up_to_date:
        return _note(request, "migrations_pending", schema,
                     f"the schema is at {status.current or 'base'}, head is {status.head}; "
                     "run `orchestrator db upgrade`")
    return _note(request, None, schema, None)


def _note(
    request: Request, reason: str | None, schema: SchemaState, problem: str | None
) -> tuple[str | None, SchemaState, str | None]:
    # Probes call every few seconds: log a change of state, not every answer.
    if getattr(request.app.state, "readiness", None) != reason:
        request.app.state.readiness = reason
        if reason is None:
            logger.info("ready")
        else:
            logger.warning("not ready (%s): %s", reason, problem)
    return reason, schema, problem
