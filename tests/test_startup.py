"""Start-up policy per environment, and the health endpoints."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from orchestrator import accounts
from orchestrator.api.app import create_app
from orchestrator.db import create_engine
from orchestrator.migrations import DatabaseAheadError, DatabaseUnreachableError, MigrationManager
from orchestrator.settings import load_settings
from tests.schema import execute


def client_for(**settings) -> TestClient:
    return TestClient(create_app(load_settings(**settings)))


def token_headers(url: str) -> dict[str, str]:
    """A new user's bearer token: the /health detail needs one."""
    engine = create_engine(url)
    with Session(engine) as session:
        _, token = accounts.create_user(session, "ops@example.com", "Ops")
        session.commit()
    engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def test_development_migrates_at_start_up_and_logs_it(sqlite_url, caplog):
    caplog.set_level(logging.INFO, logger="orchestrator")
    with client_for(database_url=sqlite_url) as client:
        assert client.app.state.startup.applied[:3] == ["001", "002", "003"]
        assert client.get("/health/ready").status_code == 200
        body = client.get("/health", headers=token_headers(sqlite_url)).json()
    assert body["environment"] == "development" and body["schema"]["up_to_date"] is True
    assert "migrated the database to" in caplog.text
    assert MigrationManager(sqlite_url).status().up_to_date


def test_a_second_start_finds_the_schema_at_head(sqlite_url, caplog):
    with client_for(database_url=sqlite_url):
        pass
    caplog.set_level(logging.INFO, logger="orchestrator")
    with client_for(database_url=sqlite_url) as client:
        assert client.app.state.startup.applied == []
    assert "database schema is at head" in caplog.text


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_other_environments_never_migrate_and_name_the_command(sqlite_url, caplog, environment):
    with client_for(environment=environment, database_url=sqlite_url) as client:
        ready = client.get("/health/ready")
        health = client.get("/health")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "reason": "migrations_pending"}
    # The detail needs a token, and there can be none before the schema is migrated; the log
    # has it.
    assert health.status_code == 401
    assert "orchestrator db upgrade" in caplog.text
    assert "not ready (migrations_pending): the schema is at base" in caplog.text
    assert MigrationManager(sqlite_url).get_current_revision() is None


def test_auto_migrate_off_in_development(sqlite_url):
    with client_for(database_url=sqlite_url, auto_migrate=False) as client:
        assert client.get("/health/ready").status_code == 503
    assert MigrationManager(sqlite_url).get_current_revision() is None


def test_ready_turns_200_after_an_explicit_upgrade_without_restart(sqlite_url):
    with client_for(environment="staging", database_url=sqlite_url) as client:
        assert client.get("/health/ready").status_code == 503
        MigrationManager(sqlite_url).upgrade()
        assert client.get("/health/ready").status_code == 200


def test_a_database_ahead_of_the_code_stops_start_up(sqlite_url):
    MigrationManager(sqlite_url).upgrade()
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    with pytest.raises(DatabaseAheadError, match="refusing to start"):
        with client_for(environment="staging", database_url=sqlite_url):
            pass


def test_ahead_after_start_up_makes_ready_503(sqlite_url):
    with client_for(database_url=sqlite_url) as client:
        execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "database_ahead"


def test_unreachable_database_stops_production_start_up():
    with pytest.raises(DatabaseUnreachableError):
        with client_for(environment="production", database_url="postgresql://u:pw@127.0.0.1:1/x"):
            pass


def test_unreachable_database_in_staging_starts_but_is_not_ready():
    url = "postgresql://u:s3cret@127.0.0.1:1/x"
    with client_for(environment="staging", database_url=url) as client:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        health = client.get("/health")
    assert ready.status_code == 503 and ready.json()["reason"] == "database_unreachable"
    assert "s3cret" not in ready.text and "s3cret" not in health.text


def test_health_never_shows_the_url(sqlite_url):
    with client_for(database_url=sqlite_url) as client:
        for path in ("/health", "/health/ready", "/health/live"):
            assert "orchestrator_test.db" not in client.get(path).text


@pytest.mark.postgres
def test_production_on_postgresql_is_ready_only_after_db_upgrade(postgres_url, run_cli):
    with client_for(environment="production", database_url=postgres_url) as client:
        assert client.get("/health/ready").status_code == 503
        result = run_cli("db", "upgrade", env={"ENVIRONMENT": "production", "DATABASE_URL": postgres_url})
        assert result.returncode == 0, result.stderr
        assert client.get("/health/ready").status_code == 200
        health = client.get("/health", headers=token_headers(postgres_url))
        assert health.json()["schema"]["up_to_date"] is True
