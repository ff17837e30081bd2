"""Start-up policy per environment, and the health endpoints."""

from __future__ import annotations

import logging
import time

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
    assert "migrated the database from base to 006" in caplog.text
    # Each step once, as it is done (the manager itself logs none of them).
    for revision in ("001", "002", "003", "004", "005", "006"):
        assert caplog.text.count(f"applied {revision}") == 1
    assert MigrationManager(sqlite_url).status().up_to_date


def test_a_replica_that_waited_says_another_process_migrated(sqlite_url, tmp_path, caplog,
                                                             monkeypatch):
    """Two replicas start together: one migrates, the other waits for it and says so (not
    "migrated the database to 005 (applied )")."""
    import threading

    from orchestrator.migrations.startup import prepare_database
    from tests.fixtures import add_revision, copy_scripts

    scripts = copy_scripts(tmp_path)
    slow = add_revision(scripts, 'Path(os.environ["ORCH_TEST_STARTED"]).touch()\n'
                                 "time.sleep(1)")
    started = tmp_path / "started"
    monkeypatch.setenv("ORCH_TEST_STARTED", str(started))
    settings = load_settings(database_url=sqlite_url)
    MigrationManager(sqlite_url, script_location=str(scripts)).upgrade("004")
    caplog.set_level(logging.INFO, logger="orchestrator")
    reports = {}

    def start(name: str) -> None:
        with MigrationManager(sqlite_url, script_location=str(scripts), lock_timeout=60) as m:
            reports[name] = prepare_database(settings, m)

    first = threading.Thread(target=start, args=("first",))
    first.start()
    while not started.exists():
        time.sleep(0.01)
    start("second")  # finds 005 pending, waits for the lock, finds it applied
    first.join()
    assert reports["first"].applied == [slow] and reports["second"].applied == []
    assert reports["second"].status.up_to_date and reports["second"].problem is None
    assert f"migrated the database from 004 to {slow}" in caplog.text
    assert f"another process migrated the database to {slow} while this one waited" in (
        caplog.text)
    assert "(applied )" not in caplog.text


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


def test_a_downgrade_that_did_not_finish_keeps_the_service_not_ready(sqlite_url, caplog):
    """The database is at head, but the newest step is a downgrade that started and did not
    finish: start-up has nothing to apply, and says what to do instead of "at head"."""
    from orchestrator.migrations import history

    MigrationManager(sqlite_url).upgrade()
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        history.record(connection, revision="004", direction=history.DOWNGRADE, duration=0.0,
                       success=False, error=history.INTERRUPTED)
    engine.dispose()
    caplog.set_level(logging.INFO, logger="orchestrator")
    with client_for(database_url=sqlite_url) as client:
        report = client.app.state.startup
        ready = client.get("/health/ready")
    assert report.applied == [] and ready.status_code == 503
    assert report.problem.startswith("downgrade of 004 started at ")
    assert report.problem.endswith("and did not finish (interrupted); run the same "
                                   "`orchestrator db downgrade` again to complete it")
    assert "a migration did not finish" in caplog.text
    assert "another process migrated" not in caplog.text
    assert "database schema is at head" not in caplog.text
