"""Agents, and claiming work for them.

Agents have no owner in the schema: every user sees the same agents. A claim hands an agent the
most urgent pending task of the caller's own projects (lowest priority level, then oldest),
marks it in_progress and returns it, in one statement:

- PostgreSQL: the candidate row is picked with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
  each lock a different task instead of queueing behind (or double-claiming) the same one.
- SQLite: the request's transaction began with BEGIN IMMEDIATE (see `deps.get_session`), so
  claims run one at a time, each a short write transaction.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import Update, delete, exists, select, update

from orchestrator.api.deps import (
    CurrentUser,
    IdPath,
    PageDep,
    SessionDep,
    not_found,
    page_of,
    problems,
)
from orchestrator.api.routes.projects import own_project
from orchestrator.api.routes.tasks import TASK_ORDER, owned_project_ids
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
from orchestrator.models import Agent, Task

router = APIRouter(prefix="/agents", tags=["agents"], responses=problems(401))


def claim_statement(
    agent_id: int, owner_id: int, project_id: int | None = None, *, dialect: str
) -> Update:
    """UPDATE ... RETURNING that marks the next pending task in_progress for the agent."""
    candidate = (
        select(Task.id)
        .where(
            Task.status == TaskStatus.pending.value,
            Task.project_id.in_(owned_project_ids(owner_id)),
        )
        .order_by(*TASK_ORDER)
        .limit(1)
    )
    if project_id is not None:
        candidate = candidate.where(Task.project_id == project_id)
    if dialect == "postgresql":
        candidate = candidate.with_for_update(of=Task, skip_locked=True)
    return (
        update(Task)
        .where(Task.id == candidate.scalar_subquery(), Task.status == TaskStatus.pending.value)
        .values(status=TaskStatus.in_progress.value, agent_id=agent_id)
        .returning(*Task.__table__.columns)
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(400))
def create_agent(body: AgentCreate, session: SessionDep, _: CurrentUser) -> AgentRead:
    """Register an agent."""
    agent = Agent(name=body.name, status=body.status.value)
    session.add(agent)
    session.commit()
    return AgentRead.model_validate(agent)


@router.get("")
def list_agents(session: SessionDep, _: CurrentUser, page: PageDep) -> Page[AgentRead]:
    """All agents, by id."""
    return page_of(session, select(Agent).order_by(Agent.id), page, AgentRead)


@router.get("/{agent_id}", responses=problems(404))
def read_agent(agent_id: IdPath, session: SessionDep, _: CurrentUser) -> AgentRead:
    """One agent."""
    return AgentRead.model_validate(_agent(session, agent_id))


@router.patch("/{agent_id}", responses=problems(400, 404))
def update_agent(
    agent_id: IdPath, body: AgentUpdate, session: SessionDep, _: CurrentUser
) -> AgentRead:
    """Rename an agent or set its status (an offline agent cannot claim)."""
    agent = _agent(session, agent_id)
    for name, value in body.changes().items():
        setattr(agent, name, value)
    session.commit()
    session.refresh(agent)
    return AgentRead.model_validate(agent)


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404, 409))
def delete_agent(agent_id: IdPath, session: SessionDep, _: CurrentUser) -> Response:
    """Remove an agent that is not working on a task."""
    _agent(session, agent_id)
    working = session.scalar(
        select(
            exists().where(
                Task.agent_id == agent_id, Task.status == TaskStatus.in_progress.value
            )
        )
    )
    if working:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"agent {agent_id} has tasks in progress; finish or release them first",
        )
    # The database sets agent_id to null on the tasks it did.
    session.execute(delete(Agent).where(Agent.id == agent_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{agent_id}/claim",
    responses={
        status.HTTP_204_NO_CONTENT: {"description": "No pending task to claim"},
        **problems(404, 409),
    },
)
def claim(
    agent_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    project_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Claim only from this project.")
    ] = None,
) -> TaskRead:
    """Give the agent your most urgent pending task (priority level, then age): 204 if none."""
    agent = _agent(session, agent_id)
    if agent.status == AgentStatus.offline.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"agent {agent_id} is offline; set its status to idle before it claims work",
        )
    if project_id is not None:
        own_project(session, user, project_id)
    statement = claim_statement(
        agent_id, user.id, project_id, dialect=session.get_bind().dialect.name
    )
    row = session.execute(statement, execution_options={"synchronize_session": False}).first()
    session.commit()
    if row is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return TaskRead.model_validate(dict(row._mapping))


def _agent(session: SessionDep, agent_id: int) -> Agent:
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    return agent
