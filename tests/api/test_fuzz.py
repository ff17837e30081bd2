"""A schema-based fuzz run: schemathesis sends generated requests to every operation of the
app's own OpenAPI schema, valid and invalid, and no response may be a server error.

The examples per operation are bounded so the run stays quick; the caller owns a project, tasks
and an agent with small ids, so generated ids often reach real rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks
from sqlalchemy.orm import Session

from orchestrator import accounts
from orchestrator.api.app import create_app
from orchestrator.db import create_engine
from orchestrator.models import Agent, Project, Task
from orchestrator.settings import Settings

EXAMPLES_PER_OPERATION = 12
# Besides "no server error", every default check runs (status codes, content types and bodies
# match the schema, valid data is accepted) except these, which test the framework's choices:
FRAMEWORK_BEHAVIOUR = [
    # Starlette answers 405 without an Allow header, and PATCH /users/me matches /users/{id}.
    openapi_checks.unsupported_method,
    openapi_checks.allow_header_conformance,
    # Unknown query parameters are ignored rather than refused.
    openapi_checks.negative_data_rejection,
]

pytestmark = pytest.mark.slow


@dataclass
class Caller:
    """The user the fuzz run calls as; made again if a generated request deletes them."""

    url: str
    headers: dict[str, str] | None = None
    made: int = 0

    def renew(self) -> None:
        self.made += 1
        engine = create_engine(self.url)
        with Session(engine) as session:
            user, token = accounts.create_user(session, f"fuzz{self.made}@example.com", "Fuzz")
            project = Project(owner_id=user.id, name="fuzzed")
            session.add_all([project, Agent(owner_id=user.id, name="fuzz agent")])
            session.flush()
            session.add_all(
                Task(project_id=project.id, title=f"task {i}", priority_level=1 + i % 5)
                for i in range(5)
            )
            session.commit()
        engine.dispose()
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture
def caller(api_db: str) -> Caller:
    caller = Caller(api_db)
    caller.renew()
    return caller


@pytest.fixture
def api_schema(api_db: str):
    app = create_app(Settings(database_url=api_db, environment="development"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    # Schemathesis keeps the app's lifespan running; end it so the engine is disposed.
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_generated_request_gets_a_server_error(case, caller: Caller):
    if case.meta.generation.mode.is_positive and case.query:
        # A cursor is valid only when the server made it: a generated one is rightly a 422.
        case.query.pop("cursor", None)
    response = case.call_and_validate(headers=caller.headers, excluded_checks=FRAMEWORK_BEHAVIOUR)
    if case.method == "DELETE" and response.status_code == 204 and "/users/" in case.path:
        caller.renew()  # the caller deleted themselves or their token
