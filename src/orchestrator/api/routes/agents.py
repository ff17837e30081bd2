"""Agents, and claiming work for them.

An agent belongs to the user who registered it (`owner_id`): only they see, change, delete or
claim with it; another user's agent answers 404, as an unknown one does. A claim hands an agent
the most urgent pending task of its owner's projects (lowest priority level, then oldest),
marks it in_progress and returns it, in one statement:

- PostgreSQL: the candidate row is picked with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
  each lock a different task instead of queueing behind (or double-claiming) the same one. The
  agent's row is read `FOR SHARE`: deleting the agent or setting it offline locks that row
  first, so a claim either finishes before and is seen (409: it holds a task), or waits and
  sees the agent gone (404) or offline (409), never a task held by an agent that is gone.
- SQLite: the request runs on the single writer connection, whose transactions begin
  IMMEDIATE (see `orchestrator.api.deps`), so claims run one at a time, each one short write
  transaction.

On PostgreSQL the caller's token is checked by the claim statement itself, which is sent from
the event loop on a connection of its own (`orchestrator.api.aio`); on SQLite the token is
checked first. Nothing else runs unless the claim comes back empty, when the token, the agent
and the project are looked at, in the thread pool, to say why (401, 404, 409 or 204).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Update, bindparam, delete, exists, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from orchestrator.accounts import hash_token, token_use_is_stale
from orchestrator.api.deps import (
    API_PROBLEMS,
    BODY_PROBLEMS,
    BearerToken,
    CurrentUser,
    Database,
    IdPath,
    SessionDep,
    authenticate,
    record_use_if_stale,
    not_found,
    problems,
    save,
)
from orchestrator.api.pagination import PageDep, page_of
from orchestrator.api.routes.projects import own_project
from orchestrator.api.schemas import (
    MAX_ID,
    AgentCreate,
    AgentRead,
    AgentStatus,
    AgentUpdate,
    Page,
    TaskRead,
    TaskStatus,
)
from orchestrator.models import Agent, ApiToken, Project, Task

router = APIRouter(prefix="/agents", tags=["agents"], responses=API_PROBLEMS)


@lru_cache(maxsize=8)
def claim_statement(dialect: str, by_project: bool = False, by_token: bool = False) -> Update:
    """UPDATE ... RETURNING that marks the next pending task in_progress for an agent.

    Takes the parameters `claimer` (the agent's id), `owner` (the calling user's id, who must
    own the agent) and, when `by_project`, `project`. With `by_token`, `token_hash` replaces
    `owner`: the caller is found by their token's hash in the same statement, which also
    returns the token's `token_id` and `token_last_used_at` (the token check and the claim in
    one round trip; an unknown token claims nothing). Built once per shape and reused: agents
    claim in a loop, and building and hashing the statement would cost more than running it.
    """
    tasks, agents, tokens = Task.__table__, Agent.__table__, ApiToken.__table__
    if by_token:
        caller = (
            select(tokens.c.user_id, tokens.c.id, tokens.c.last_used_at)
            .where(tokens.c.token_hash == bindparam("token_hash"))
            .cte("caller")
        )
        owner = select(caller.c.user_id).scalar_subquery()
    else:
        owner = bindparam("owner")
    # The agent must be the caller's and not offline; checked here rather than by a query of
    # its own, so that a successful claim is one statement.
    claimer = select(agents.c.id).where(
        agents.c.id == bindparam("claimer"),
        agents.c.owner_id == owner,
        agents.c.status != AgentStatus.offline.value,
    )
    if dialect == "postgresql":
        claimer = claimer.with_for_update(read=True)
    claimer_cte = claimer.cte("claimer")
    candidate = (
        select(tasks.c.id)
        .where(
            tasks.c.status == TaskStatus.pending.value,
            tasks.c.project_id.in_(select(Project.id).where(Project.owner_id == owner)),
            exists(select(claimer_cte.c.id)),
        )
        .order_by(tasks.c.priority_level, tasks.c.created_at, tasks.c.id)
        .limit(1)
    )
    if by_project:
        candidate = candidate.where(tasks.c.project_id == bindparam("project"))
    if dialect == "postgresql":
        candidate = candidate.with_for_update(of=tasks, skip_locked=True)
    returned = list(tasks.c)
    if by_token:
        returned += [
            select(caller.c.id).scalar_subquery().label("token_id"),
            select(caller.c.last_used_at).scalar_subquery().label("token_last_used_at"),
        ]
    return (
        update(tasks)
        .where(
            tasks.c.id == candidate.scalar_subquery(),
            tasks.c.status == TaskStatus.pending.value,
        )
        .values(status=TaskStatus.in_progress.value, agent_id=bindparam("claimer"))
        .returning(*returned)
    )


# The claim first: the router tries its routes in order, and agents claim in a loop.
@router.post(
    "/{agent_id}/claim",
    responses={
        status.HTTP_204_NO_CONTENT: {"description": "No pending task to claim"},
        **problems(404, 409),
    },
)
async def claim(
    request: Request,
    agent_id: IdPath,
    credentials: BearerToken,
    project_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Claim only from this project.")
    ] = None,
) -> TaskRead:
    """Give your agent your most urgent pending task (priority level, then age): 204 if none."""
    db: Database = request.app.state.db
    if (
        db.statements is not None
        and credentials is not None
        and credentials.scheme.lower() == "bearer"
    ):
        # PostgreSQL: the token check and the claim in one autocommit statement, sent from the
        # event loop (`orchestrator.api.aio`): agents call this in a loop, and a trip to the
        # thread pool and through the engine costs the server more CPU than the statement.
        sql, constants = _compiled_claim_by_token(db.auth, project_id is not None)
        parameters = {
            **constants,
            "claimer": agent_id,
            "token_hash": hash_token(credentials.credentials),
            "project": project_id,
        }
        row = await db.statements.fetch_one(sql, parameters)
        if row is not None:
            if token_use_is_stale(row["token_last_used_at"]):
                await run_in_threadpool(
                    record_use_if_stale, db, row["token_id"], row["token_last_used_at"]
                )
            return _task_response(row)
        # Nothing was claimed: an unknown token, an agent that is not yours or offline, or no
        # pending task when the statement ran. Only say which (without claiming again).
        return await run_in_threadpool(_claim, db, credentials, agent_id, project_id, False)
    # SQLite (or no bearer token): check the token, claim, and say why when nothing is left;
    # all in one thread-pool trip (`CurrentUser` and `SessionDep` would take one each).
    return await run_in_threadpool(_claim, db, credentials, agent_id, project_id, True)


@router.post("", status_code=status.HTTP_201_CREATED, responses=BODY_PROBLEMS)
def create_agent(body: AgentCreate, session: SessionDep, user: CurrentUser) -> AgentRead:
    """Register an agent, owned by you."""
    agent = Agent(owner_id=user.id, name=body.name, status=body.status.value)
    session.add(agent)
    session.commit()
    return AgentRead.model_validate(agent)


@router.get("")
def list_agents(session: SessionDep, user: CurrentUser, page: PageDep) -> Page[AgentRead]:
    """Your agents, by id."""
    statement = select(Agent).where(Agent.owner_id == user.id).order_by(Agent.id)
    return page_of(session, statement, page, AgentRead, order=(Agent.id,), name="agents")


@router.get("/{agent_id}", responses=problems(404))
def read_agent(agent_id: IdPath, session: SessionDep, user: CurrentUser) -> AgentRead:
    """One of your agents."""
    return AgentRead.model_validate(own_agent(session, user.id, agent_id))


@router.patch("/{agent_id}", responses={**BODY_PROBLEMS, **problems(404, 409)})
def update_agent(
    agent_id: IdPath, body: AgentUpdate, session: SessionDep, user: CurrentUser
) -> AgentRead:
    """Rename your agent or set its status; an agent that holds tasks cannot go offline."""
    changes = body.changes()
    going_offline = changes.get("status") == AgentStatus.offline.value
    agent = own_agent(session, user.id, agent_id, lock=going_offline)
    if going_offline and agent.status != AgentStatus.offline.value:
        _require_no_work(session, agent_id, "go offline")
    for name, value in changes.items():
        setattr(agent, name, value)
    save(session, agent)
    return AgentRead.model_validate(agent)


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404, 409))
def delete_agent(agent_id: IdPath, session: SessionDep, user: CurrentUser) -> Response:
    """Remove your agent, when it is not working on a task."""
    own_agent(session, user.id, agent_id, lock=True)
    _require_no_work(session, agent_id, "be deleted")
    # The database sets agent_id to null on the tasks it did.
    session.execute(delete(Agent).where(Agent.id == agent_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _require_no_work(session: Session, agent_id: int, action: str) -> None:
    """409 while the agent holds tasks in progress (call with the agent's row locked, so that
    no claim can give it one meanwhile)."""
    held = session.scalars(
        select(Task.id)
        .where(Task.agent_id == agent_id, Task.status == TaskStatus.in_progress.value)
        .order_by(Task.id)
        .limit(3)
    ).all()
    if held:
        count = session.scalar(
            select(func.count())
            .select_from(Task)
            .where(Task.agent_id == agent_id, Task.status == TaskStatus.in_progress.value)
        )
        shown = ", ".join(str(task_id) for task_id in held) + (", …" if count > len(held) else "")
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"agent {agent_id} holds {count} task{'s' * (count != 1)} in progress ({shown}) "
            f"and cannot {action}; finish or release them first "
            '(PATCH /api/v1/tasks/{id} with {"status": "pending"})',
        )


def _claim(
    db: Database,
    credentials: HTTPAuthorizationCredentials | None,
    agent_id: int,
    project_id: int | None,
    try_claim: bool,
) -> Response:
    with Session(db.writer, expire_on_commit=False) as session:
        return _claim_in_session(db, session, credentials, agent_id, project_id, try_claim)


@lru_cache(maxsize=2)
def _compiled_claim_by_token(engine: Engine, by_project: bool) -> tuple[str, dict[str, Any]]:
    """The claim-by-token statement as SQL text and its constant parameters, compiled once:
    SQLAlchemy would otherwise work out the statement's cache key on every claim, which costs
    more CPU than anything else the claim does in this process."""
    compiled = claim_statement("postgresql", by_project, by_token=True).compile(
        dialect=engine.dialect
    )
    return str(compiled), dict(compiled.params)


def _claim_in_session(
    db: Database,
    session: Session,
    credentials: HTTPAuthorizationCredentials | None,
    agent_id: int,
    project_id: int | None,
    try_claim: bool = True,
) -> Response:
    user = authenticate(db, credentials)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # The claim is one statement, atomic by itself: no BEGIN and COMMIT round trips.
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    if try_claim:
        statement = claim_statement(dialect, project_id is not None)
        parameters = {"claimer": agent_id, "owner": user.id, "project": project_id}
        row = session.execute(statement, parameters).first()
        if row is not None:
            session.commit()
            return _task_response(row)
    # Nothing was claimed: say why when it is not simply an empty queue.
    agent = own_agent(session, user.id, agent_id)
    if agent.status == AgentStatus.offline.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"agent {agent_id} is offline; set its status to idle before it claims work",
        )
    if project_id is not None:
        own_project(session, user, project_id)
    session.rollback()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _task_response(row: Any) -> Response:
    # Serialised here, once: returning the model would have FastAPI validate it again.
    task = TaskRead.model_validate(row if isinstance(row, dict) else row._mapping)
    return Response(task.model_dump_json(), media_type="application/json")


def own_agent(session: Session, owner_id: int, agent_id: int, *, lock: bool = False) -> Agent:
    """The user's agent; 404 when it is unknown or someone else's. With `lock`, its row locked
    until the transaction ends (claims wait)."""
    agent = session.get(Agent, agent_id, with_for_update=lock or None)
    if agent is None or agent.owner_id != owner_id:
        raise not_found("agent", agent_id)
    return agent
