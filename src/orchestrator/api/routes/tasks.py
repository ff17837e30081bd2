"""Tasks: they live in projects, so a user sees and changes only the tasks of their projects.

Lists are ordered the way agents claim work, most urgent first: by priority level, then age
(then id, so that tasks made in the same instant keep a fixed order). The statements are public
so that the tests can check their query plans use the indexes of migration 003.

A task keeps these invariants (docs/api.md, "Task invariants"); a change that would break one
is refused with 409, naming the moves that are allowed:

- pending → in_progress → done or failed; in_progress → pending releases the task.
- A task is in progress exactly when an agent holds it: a pending task has no agent, and a task
  starts only with an agent (claimed, or `{"status": "in_progress", "agent_id": N}`).
- Only an agent that can work (known, not offline) is given a task.
- Done and failed are final: nothing about the task changes any more (it can be deleted).
  Sending a field's present value is not a change, so a retried request succeeds.
- The agent of a task that ends is the agent that held it.

Agents and projects are read with a share lock where a task is tied to them, so that a
concurrent delete or status change either waits for this request or is seen by it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from orchestrator.accounts import Caller
from orchestrator.api.deps import (
    API_PROBLEMS,
    BODY_PROBLEMS,
    CurrentUser,
    IdPath,
    SessionDep,
    lock_for_share,
    not_found,
    problems,
    save,
)
from orchestrator.api.pagination import PageDep, page_of
from orchestrator.api.routes.projects import own_project
from orchestrator.api.schemas import (
    MAX_ID,
    AgentStatus,
    Page,
    TaskCreate,
    TaskRead,
    TaskStatus,
    TaskUpdate,
)
from orchestrator.models import Agent, Project, Task

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=API_PROBLEMS)

# Most urgent first: the order of ix_tasks_status_priority_created (id breaks ties).
TASK_ORDER = (Task.priority_level, Task.created_at, Task.id)

# The status machine: where each status may move to.
ALLOWED_MOVES: dict[TaskStatus, tuple[TaskStatus, ...]] = {
    TaskStatus.pending: (TaskStatus.in_progress,),
    TaskStatus.in_progress: (TaskStatus.done, TaskStatus.failed, TaskStatus.pending),
    TaskStatus.done: (),
    TaskStatus.failed: (),
}
FINAL = frozenset({TaskStatus.done, TaskStatus.failed})


def owned_project_ids(owner_id: int) -> Select:
    """The ids of a user's projects, as a subquery."""
    return select(Project.id).where(Project.owner_id == owner_id)


def list_tasks_statement(
    owner_id: int,
    *,
    project_id: int | None = None,
    status: str | None = None,
    agent_id: int | None = None,
    priority_level: int | None = None,
) -> Select:
    """The user's tasks matching the filters, most urgent first."""
    statement = select(Task).where(Task.project_id.in_(owned_project_ids(owner_id)))
    if project_id is not None:
        statement = statement.where(Task.project_id == project_id)
    if status is not None:
        statement = statement.where(Task.status == status)
    if agent_id is not None:
        statement = statement.where(Task.agent_id == agent_id)
    if priority_level is not None:
        statement = statement.where(Task.priority_level == priority_level)
    return statement.order_by(*TASK_ORDER)


def check_move(task: Task, new: TaskStatus) -> None:
    """409 unless the status machine allows `task` to move to `new` (staying put is allowed)."""
    current = TaskStatus(task.status)
    if new is current or new in ALLOWED_MOVES[current]:
        return
    raise _conflict(task, f"cannot move from {current.value} to {new.value}")


def check_update(
    session: Session, task: Task, sent: dict[str, object], owner_id: int
) -> dict[str, object]:
    """The changes to make to `task` for an update that sent `sent`; 409 (or 404 for an
    agent that is unknown or not the user's) when they would break one of the invariants."""
    # A field sent with its present value is no change: retrying "done" on a done task is fine.
    changes = {name: value for name, value in sent.items() if value != getattr(task, name)}
    if not changes:
        return {}
    current = TaskStatus(task.status)
    if current in FINAL:
        raise _conflict(task, f"is {current.value}, which is final: it cannot be changed "
                              "(delete it, or create a new task)")
    new = TaskStatus(changes.get("status", current))
    check_move(task, new)
    agent_id = changes.get("agent_id", task.agent_id)
    if new is TaskStatus.pending:
        if sent.get("agent_id") is not None:
            raise _conflict(task, "cannot be pending with an agent: a pending task has none; to "
                                  "give it to an agent send "
                                  f'{{"status": "in_progress", "agent_id": {sent["agent_id"]}}}')
        if task.agent_id is not None:
            changes["agent_id"] = None  # released
    elif new is TaskStatus.in_progress:
        if agent_id is None:
            raise _conflict(task, "needs an agent to be in progress: send agent_id with it, or "
                                  "let the agent claim it (POST /api/v1/agents/{id}/claim); to "
                                  'release it send {"status": "pending"}')
        if "agent_id" in changes or current is not TaskStatus.in_progress:
            require_working_agent(session, int(agent_id), owner_id)
    elif "agent_id" in changes:
        raise _conflict(task, f"ends with the agent that held it ({task.agent_id}); send the "
                              f"status {new.value} without another agent_id")
    return changes


def require_working_agent(session: Session, agent_id: int, owner_id: int) -> Agent:
    """The user's agent `agent_id`, share-locked; 404 if unknown or another user's, 409 if it
    cannot work (offline)."""
    agent = session.scalar(lock_for_share(select(Agent).where(Agent.id == agent_id)))
    if agent is None or agent.owner_id != owner_id:
        raise not_found("agent", agent_id)
    if agent.status == AgentStatus.offline.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"agent {agent_id} is offline and cannot be given work; set its status to idle "
            "first, or choose another agent",
        )
    return agent


def _conflict(task: Task, problem: str) -> HTTPException:
    current = TaskStatus(task.status)
    allowed = ", ".join(move.value for move in ALLOWED_MOVES[current]) or "none (it is final)"
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"task {task.id} {problem}; allowed moves from {current.value}: {allowed}",
    )


def own_task(session: Session, user: Caller, task_id: int, *, for_update: bool = False) -> Task:
    """The task `task_id` of one of the user's projects; 404 otherwise."""
    statement = select(Task).where(
        Task.id == task_id, Task.project_id.in_(owned_project_ids(user.id))
    )
    if for_update:
        # Two concurrent moves of one task must not both pass the status check.
        statement = statement.with_for_update(of=Task)
    task = session.scalar(statement)
    if task is None:
        raise not_found("task", task_id)
    return task


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses={**BODY_PROBLEMS, **problems(404, 409)}
)
def create_task(body: TaskCreate, session: SessionDep, user: CurrentUser) -> TaskRead:
    """Add a pending task to one of your projects."""
    # Locked until the task is in: a concurrent delete of the project waits, or is seen here.
    own_project(session, user, body.project_id, lock=True)
    task = Task(**body.model_dump())
    session.add(task)
    session.commit()
    return TaskRead.model_validate(task)


@router.get("", responses=problems(404))
def list_tasks(
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    project_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: TaskStatus | None = None,
    agent_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    priority_level: Annotated[int | None, Query(ge=1, le=5)] = None,
) -> Page[TaskRead]:
    """Your tasks, most urgent first (priority level, then age), filtered as asked."""
    if project_id is not None:
        own_project(session, user, project_id)
    statement = list_tasks_statement(
        user.id,
        project_id=project_id,
        status=status.value if status is not None else None,
        agent_id=agent_id,
        priority_level=priority_level,
    )
    return page_of(session, statement, page, TaskRead, order=TASK_ORDER, name="tasks")


@router.get("/{task_id}", responses=problems(404))
def read_task(task_id: IdPath, session: SessionDep, user: CurrentUser) -> TaskRead:
    """One task of your projects."""
    return TaskRead.model_validate(own_task(session, user, task_id))


@router.patch("/{task_id}", responses={**BODY_PROBLEMS, **problems(404, 409)})
def update_task(
    task_id: IdPath, body: TaskUpdate, session: SessionDep, user: CurrentUser
) -> TaskRead:
    """Edit a task or move its status, within the task invariants (409 otherwise).

    Start a pending task with `{"status": "in_progress", "agent_id": N}`; `{"status":
    "pending"}` releases a task from its agent; a done or failed task no longer changes.
    """
    task = own_task(session, user, task_id, for_update=True)
    changes = check_update(session, task, body.changes(), user.id)
    if not changes:
        return TaskRead.model_validate(task)  # the session's end rolls back (and unlocks)
    for name, value in changes.items():
        setattr(task, name, value)
    save(session, task)
    return TaskRead.model_validate(task)


@router.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
def delete_task(task_id: IdPath, session: SessionDep, user: CurrentUser) -> Response:
    """Delete a task of one of your projects."""
    own_task(session, user, task_id)
    session.execute(delete(Task).where(Task.id == task_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
