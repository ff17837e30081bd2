"""The ORM models: users own projects, projects hold tasks, agents work on tasks.

The schema itself is created only by the migrations in `orchestrator/migrations/alembic`;
these models must describe exactly what the migrations build (a test checks it).
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names are part of the schema: migrations refer to them by name, so they must be
# predictable on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskStatus(str, enum.Enum):
    pending = "pending"
    in_progress = "in_progress"
    done = "done"
    failed = "failed"


class AgentStatus(str, enum.Enum):
    idle = "idle"
    busy = "busy"
    offline = "offline"


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True),
        server_default=func.current_timestamp(),
        onupdate=func.current_timestamp(),
    )


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Admins create, list, promote and demote users; members see only themselves.
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=false())

    projects: Mapped[list[Project]] = relationship(back_populates="owner")


class Project(TimestampMixin, Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)

    owner: Mapped[User] = relationship(back_populates="projects")
    tasks: Mapped[list[Task]] = relationship(back_populates="project")


class Agent(TimestampMixin, Base):
    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint("status IN ('idle', 'busy', 'offline')", name="status_valid"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The user the agent works for: only they see and change it, and it claims only tasks of
    # their projects. Deleting the user deletes their agents.
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), server_default=AgentStatus.idle.value)

    tasks: Mapped[list[Task]] = relationship(back_populates="agent")


class Task(TimestampMixin, Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'in_progress', 'done', 'failed')", name="status_valid"
        ),
        # Serves "the next pending task by priority": WHERE status = 'pending'
        # ORDER BY priority_level, created_at.
        Index("ix_tasks_status_priority_created", "status", "priority_level", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    agent_id: Mapped[int | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(20), server_default=TaskStatus.pending.value, index=True
    )
    # 1 is the most urgent, 5 the least.
    priority_level: Mapped[int] = mapped_column(
        Integer,
        CheckConstraint("priority_level BETWEEN 1 AND 5", name="priority_level_range"),
        server_default="3",
        index=True,
    )

    project: Mapped[Project] = relationship(back_populates="tasks")
    agent: Mapped[Agent | None] = relationship(back_populates="tasks")


class ApiToken(TimestampMixin, Base):
    """A user's bearer token for the API; only its SHA-256 is stored (the token is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Hex SHA-256 of the token: every request looks its token up by this.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so that a user can tell their tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # When a request last used the token, to the minute at best: written at most once a minute
    # per token (see orchestrator.accounts), so that requests do not all write.
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
