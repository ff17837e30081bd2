"""Projects: each belongs to the user who made it, and only they see or change it.

Another user's project answers 404, as an unknown one does, so ids reveal nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from orchestrator.accounts import Caller
from orchestrator.api.deps import (
    API_PROBLEMS,
    BODY_PROBLEMS,
    CurrentUser,
    IdPath,
    SessionDep,
    not_found,
    problems,
    save,
)
from orchestrator.api.pagination import PageDep, page_of
from orchestrator.api.schemas import Page, ProjectCreate, ProjectRead, ProjectUpdate
from orchestrator.models import Project

router = APIRouter(prefix="/projects", tags=["projects"], responses=API_PROBLEMS)


def own_project(session: Session, user: Caller, project_id: int, *, lock: bool = False) -> Project:
    """The user's project `project_id`; 404 when it is unknown or someone else's.

    With `lock`, the project cannot be deleted until the transaction ends (PostgreSQL's
    FOR KEY SHARE, what a foreign key takes anyway): for a request that adds rows to it.
    """
    statement = select(Project).where(Project.id == project_id)
    if lock:
        statement = statement.with_for_update(read=True, key_share=True)
    project = session.scalar(statement)
    if project is None or project.owner_id != user.id:
        raise not_found("project", project_id)
    return project


@router.post("", status_code=status.HTTP_201_CREATED, responses={**BODY_PROBLEMS, **problems(409)})
def create_project(body: ProjectCreate, session: SessionDep, user: CurrentUser) -> ProjectRead:
    """Create a project owned by you."""
    project = Project(owner_id=user.id, **body.model_dump())
    session.add(project)
    session.commit()
    return ProjectRead.model_validate(project)


@router.get("")
def list_projects(session: SessionDep, user: CurrentUser, page: PageDep) -> Page[ProjectRead]:
    """Your projects, by id."""
    statement = select(Project).where(Project.owner_id == user.id).order_by(Project.id)
    return page_of(session, statement, page, ProjectRead, order=(Project.id,), name="projects")


@router.get("/{project_id}", responses=problems(404))
def read_project(project_id: IdPath, session: SessionDep, user: CurrentUser) -> ProjectRead:
    """One of your projects."""
    return ProjectRead.model_validate(own_project(session, user, project_id))


@router.patch("/{project_id}", responses={**BODY_PROBLEMS, **problems(404)})
def update_project(
    project_id: IdPath, body: ProjectUpdate, session: SessionDep, user: CurrentUser
) -> ProjectRead:
    """Rename or describe one of your projects."""
    project = own_project(session, user, project_id)
    for name, value in body.changes().items():
        setattr(project, name, value)
    save(session, project)
    return ProjectRead.model_validate(project)


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
def delete_project(project_id: IdPath, session: SessionDep, user: CurrentUser) -> Response:
    """Delete one of your projects and its tasks."""
    own_project(session, user, project_id)
    # The database cascades to the tasks; the ORM would try to orphan them instead.
    session.execute(delete(Project).where(Project.id == project_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
