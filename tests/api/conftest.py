"""Fixtures for the HTTP API: a migrated database (SQLite or PostgreSQL), the app, users."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from orchestrator import accounts
from orchestrator.api.app import create_app
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager
from orchestrator.settings import Settings
from tests.api.conformance import check_every_response
from tests.conftest import require_postgres, scratch_postgres_database


@dataclass
class ApiUser:
    id: int
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def _sqlite_at_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run, copied by each test."""
    path = tmp_path_factory.mktemp("api-template") / "head.db"
    with MigrationManager(f"sqlite:///{path}", lock_timeout=30) as manager:
        manager.upgrade()
    return path


@pytest.fixture(scope="session")
def _postgres_at_head() -> Iterator[tuple[str, str]]:
    """(admin URL, template database) migrated to head once per run."""
    admin_url = require_postgres()
    with scratch_postgres_database(admin_url) as url:
        with MigrationManager(url, lock_timeout=30) as manager:
            manager.upgrade()
        yield admin_url, make_url(url).database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at head, SQLite then PostgreSQL, copied from one migrated per run
    (migrating each test's database would take most of the suite's time)."""
    if request.param == "sqlite":
        path = tmp_path / "api.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_at_head"), path)
        yield f"sqlite:///{path}"
        return
    admin_url, template = request.getfixturevalue("_postgres_at_head")
    with scratch_postgres_database(admin_url, template=template) as url:
        yield url


@pytest.fixture
def client(api_db: str) -> Iterator[TestClient]:
    """The app on `api_db`, with its lifespan running; every answer it gets is checked against
    the OpenAPI document (tests/api/conformance.py)."""
    app = create_app(Settings(database_url=api_db, environment="development"))
    with TestClient(app) as test_client:
        check_every_response(test_client)
        yield test_client


@pytest.fixture
def make_user(api_db: str) -> Iterator[Callable[..., ApiUser]]:
    """Create users straight in the database (as `orchestrator users create` does)."""
    engine = create_engine(api_db)
    numbers = itertools.count(1)

    def make(email: str | None = None, name: str = "Test User", admin: bool = False) -> ApiUser:
        with Session(engine, expire_on_commit=False) as session:
            user, token = accounts.create_user(
                session, email or f"user{next(numbers)}@example.com", name, admin=admin
            )
            session.commit()
        return ApiUser(user.id, user.email, token)

    yield make
    engine.dispose()


@pytest.fixture
def admin(make_user) -> ApiUser:
    return make_user("root@example.com", "Root", admin=True)


@pytest.fixture
def alice(make_user) -> ApiUser:
    return make_user("alice@example.com", "Alice")


@pytest.fixture
def bob(make_user) -> ApiUser:
    return make_user("bob@example.com", "Bob")
