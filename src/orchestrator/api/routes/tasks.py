"""Tasks: they live in projects, so a user sees and changes only the tasks of their projects.

Lists are ordered the way agents claim work, most urgent first: by priority level, then age
(then id, so that tasks made in the same instant keep a fixed order). The statements are public
so that the tests can check their query plans use the indexes of migration 003.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from orchestrator.accounts import Caller
from orchestrator.api.deps import (
    CurrentUser,
    IdPath,
    PageDep,
    SessionDep,
    not_found,
    page_of,
    problems,
    save,
)
from orchestrator.api.routes.projects import own_project
from orchestrator.api.schemas import (
    MAX_ID,
    Page,
    TaskCreate,
    TaskRead,
    TaskStatus,
    TaskUpdate,
)
from orchestrator.models import Agent, Project, Task

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=problems(401))

# Most urgent first: the order of ix_tasks_status_priority_created (id breaks ties).
TASK_ORDER = (Task.priority_level, Task.created_at, Task.id)

# The status machine: where each status may move to.
ALLOWED_MOVES: dict[TaskStatus, tuple[TaskStatus, ...]] = {
    TaskStatus.pending: (TaskStatus.in_progress,),
    TaskStatus.in_progress: (TaskStatus.done, TaskStatus.failed, TaskStatus.pending),
    TaskStatus.done: (),
    TaskStatus.failed: (),
}


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
    allowed = ", ".join(move.value for move in ALLOWED_MOVES[current]) or "none (it is final)"
    raise HTTPException(
        status.HTTP_409_CONFLICT,
        f"task {task.id} cannot move from {current.value} to {new.value}; "
        f"allowed moves from {current.value}: {allowed}",
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


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(400, 404))
def create_task(body: TaskCreate, session: SessionDep, user: CurrentUser) -> TaskRead:
    """Add a pending task to one of your projects."""
    own_project(session, user, body.project_id)
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
    return page_of(session, statement, page, TaskRead)


@router.get("/{task_id}", responses=problems(404))
def read_task(task_id: IdPath, session: SessionDep, user: CurrentUser) -> TaskRead:
    """One task of your projects."""
    return TaskRead.model_validate(own_task(session, user, task_id))


@router.patch("/{task_id}", responses=problems(400, 404, 409))
def update_task(
    task_id: IdPath, body: TaskUpdate, session: SessionDep, user: CurrentUser
) -> TaskRead:
    """Edit a task or move its status; moving back to pending releases it from its agent."""
    task = own_task(session, user, task_id, for_update=True)
    changes = body.changes()
    if "status" in changes:
        new = TaskStatus(changes["status"])
        check_move(task, new)
        if new is TaskStatus.pending and "agent_id" not in changes:
            changes["agent_id"] = None
    if changes.get("agent_id") is not None and session.get(Agent, changes["agent_id"]) is None:
        raise not_found("agent", changes["agent_id"])
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
