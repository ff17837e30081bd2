"""Request and response bodies of `/api/v1` (Pydantic v2).

Every string is checked to fit its column and to be storable on both databases (PostgreSQL
refuses NUL characters, and neither driver can encode a lone UTF-16 surrogate), so that bad
input is a 422 naming the field, never a database error; the rules are in the OpenAPI schema
as lengths and patterns, so generated clients and the fuzz test know them. In update bodies a
field left out keeps its value, and null is accepted only where the column is nullable.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from orchestrator.accounts import EMAIL_MAX_LENGTH, EMAIL_PATTERN
from orchestrator.models import AgentStatus, TaskStatus

# Ids are 32-bit on PostgreSQL: larger ones cannot exist, and would fail in the query.
MAX_ID = 2**31 - 1
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
# Deeper pages go by cursor: an offset makes the database read and drop every row before it.
MAX_OFFSET = 10_000
MAX_CURSOR_LENGTH = 200


# Text the databases can store: no NUL (PostgreSQL refuses it). Names and titles also need a
# character that is neither a space nor a control character. Written as patterns, so the
# OpenAPI schema states the rule; explicit ranges, because `\s` differs between regex engines.
_ANY_TEXT = r"^[^\x00]*$"
_SOME_TEXT = r"^[^\x00]*[^\x00-\x20][^\x00]*$"


def _encodable(value: str) -> str:
    # JSON may carry a lone UTF-16 surrogate ("\ud800"); neither driver can store one.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _text(max_length: int, pattern: str) -> Any:
    return Annotated[
        str,
        StringConstraints(max_length=max_length, pattern=pattern),
        AfterValidator(_encodable),
    ]


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Name = _text(200, _SOME_TEXT)
Title = _text(500, _SOME_TEXT)
Description = _text(10_000, _ANY_TEXT)


def _lower_email(value: str) -> str:
    value = _encodable(value).lower()
    # Lower-casing can lengthen a few characters ("İ" becomes two).
    if len(value) > EMAIL_MAX_LENGTH:
        raise ValueError(f"must be at most {EMAIL_MAX_LENGTH} characters")
    return value


Email = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN),
    AfterValidator(_lower_email),
]
PriorityLevel = Annotated[int, Field(ge=1, le=5, description="1 is the most urgent, 5 the least.")]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unchanged() -> Any:
    """The default of an update field that is not sent: the stored value is kept.

    The field's type does not admit null unless the column does, so an explicit null for a
    required column is a 422 naming the field, and the schema says so.
    """
    return Field(default=None, json_schema_extra=_no_default)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class _Update(_Input):
    """A partial update: only the fields sent are changed."""

    def changes(self) -> dict[str, object]:
        """The fields that were sent, with plain values (enums as their strings)."""
        values = self.model_dump(exclude_unset=True, mode="json")
        return {name: values[name] for name in self.model_fields_set}


def _as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite returns CURRENT_TIMESTAMP without a zone (it is UTC); PostgreSQL in the session's.
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


Timestamp = Annotated[dt.datetime, AfterValidator(_as_utc)]


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list; ask for the next with `cursor=next_cursor` until it is null."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="The `offset` of the next page when this one was asked for by offset "
        f"(null at the end, and when paging by cursor); offsets stop at {MAX_OFFSET:,}."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page. Opaque: its "
        "content may change between versions."
    )


# -- users and tokens ---------------------------------------------------------------------


class UserCreate(_Input):
    email: Email
    name: Name
    is_admin: bool = Field(default=False, description="Make the user an admin.")


class UserUpdate(_Update):
    email: Email = _unchanged()
    name: Name = _unchanged()
    is_admin: bool = Field(
        default=None,
        json_schema_extra=_no_default,
        description="Promote (true) or demote (false); admins only.",
    )


class UserRead(_Output):
    id: int
    email: str
    name: str
    is_admin: bool = Field(
        description="Admins create, list, promote and demote users; members see only "
        "themselves."
    )
    created_at: Timestamp
    updated_at: Timestamp


class TokenCreate(_Input):
    name: Name = Field(description="What the token is for, e.g. the machine that uses it.")


class TokenRead(_Output):
    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: Timestamp
    last_used_at: Timestamp | None = Field(
        description="When a request last used the token (to the minute); null if never."
    )


class NewToken(TokenRead):
    token: str = Field(description="The token itself. It is shown only this once.")


class NewUser(UserRead):
    token: str = Field(description="The user's first API token. It is shown only this once.")


# -- projects -----------------------------------------------------------------------------


class ProjectCreate(_Input):
    name: Name
    description: Description | None = None


class ProjectUpdate(_Update):
    name: Name = _unchanged()
    description: Description | None = _unchanged()


class ProjectRead(_Output):
    id: int
    owner_id: int
    name: str
    description: str | None
    created_at: Timestamp
    updated_at: Timestamp


# -- agents -------------------------------------------------------------------------------


class AgentCreate(_Input):
    name: Name
    status: AgentStatus = AgentStatus.idle


class AgentUpdate(_Update):
    name: Name = _unchanged()
    status: AgentStatus = _unchanged()


class AgentRead(_Output):
    id: int
    owner_id: int = Field(description="The user the agent works for (who registered it).")
    name: str
    status: AgentStatus
    created_at: Timestamp
    updated_at: Timestamp


# -- tasks --------------------------------------------------------------------------------


class TaskCreate(_Input):
    project_id: Id
    title: Title
    description: Description | None = None
    priority_level: PriorityLevel = 3


class TaskUpdate(_Update):
    title: Title = _unchanged()
    description: Description | None = _unchanged()
    priority_level: PriorityLevel = _unchanged()
    status: TaskStatus = Field(
        default=None,
        json_schema_extra=_no_default,
        description=(
            "pending → in_progress (with an agent) → done or failed; in_progress → pending "
            "releases the task from its agent. Done and failed are final. Any other move is "
            "refused with 409."
        ),
    )
    agent_id: Id | None = Field(
        default=None,
        json_schema_extra=_no_default,
        description=(
            "The agent that holds the task: only with status in_progress (to start a pending "
            "task, or to hand an in-progress one to another agent), and only an agent that is "
            "not offline."
        ),
    )


class TaskRead(_Output):
    id: int
    project_id: int
    agent_id: int | None
    title: str
    description: str | None
    status: TaskStatus
    priority_level: int
    created_at: Timestamp
    updated_at: Timestamp


class Problem(BaseModel):
    """An error: `detail` says what is wrong and what to do."""

    detail: str


# -- health -------------------------------------------------------------------------------


ReadinessReason = Literal[
    "database_unreachable",
    "migrations_pending",
    "database_ahead",
    "database_unversioned",
    "migrations_unusable",
    "check_failed",
]


class Liveness(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    status: Literal["ready"]


class NotReady(BaseModel):
    """Not ready, and why, as a code (the details are on `/health`, with a token)."""

    status: Literal["not ready"] = "not ready"
    reason: ReadinessReason


class SchemaState(BaseModel):
    current: str | None
    head: str | None
    pending: list[str]
    up_to_date: bool


class HealthDetail(BaseModel):
    environment: str
    schema_: SchemaState = Field(alias="schema")
    reason: ReadinessReason | None = Field(
        description="As `/health/ready` gives it; null when ready."
    )
    problem: str | None = Field(description="What is wrong and what to do; null when ready.")

    model_config = ConfigDict(populate_by_name=True)
