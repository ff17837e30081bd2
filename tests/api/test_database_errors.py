"""Database errors are sorted once (`database_problem`), from real errors of both databases: what
a concurrent change or an operator causes is a 409 or a 503; anything else is a bug, a 500 with
a JSON body."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestrator.api.app import create_app
from orchestrator.api.errors import BUSY, NOT_READY, UNAVAILABLE, database_problem
from orchestrator.db import create_engine
from orchestrator.models import Project
from orchestrator.settings import Settings
from tests.api.conformance import check_every_response


def _error(url: str, *statements: str) -> DBAPIError:
    """The error the last statement raises (the others run first, committed)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for statement in statements[:-1]:
                connection.execute(text(statement))
            connection.commit()
            with pytest.raises(DBAPIError) as caught:
                connection.execute(text(statements[-1]))
            return caught.value
    finally:
        engine.dispose()


def test_constraint_violations_are_conflicts(api_db):
    missing_project = _error(api_db, "INSERT INTO tasks (project_id, title) VALUES (999, 't')")
    problem = database_problem(missing_project)
    assert problem.status_code == 409
    assert problem.detail.startswith("another request changed the data this one depends on")
    duplicate = _error(api_db, "INSERT INTO users (email, name) VALUES ('a@b.c', 'A')",
                       "INSERT INTO users (email, name) VALUES ('a@b.c', 'B')")
    assert database_problem(duplicate).status_code == 409
    if "postgresql" in api_db:  # PostgreSQL names the constraint
        assert "(fk_tasks_project_id_projects)" in problem.detail


def test_a_schema_changed_under_the_server_is_not_ready(api_db):
    dropped = _error(api_db, "DROP TABLE api_tokens", "SELECT * FROM api_tokens")
    assert database_problem(dropped) is NOT_READY
    assert database_problem(_error(api_db, "SELECT no_such_column FROM tasks")) is NOT_READY


def test_a_syntax_error_is_a_bug(api_db):
    assert database_problem(_error(api_db, "SELEC 1")) is None


def test_a_locked_database_is_busy(api_db):
    holder = create_engine(api_db)
    waiter = create_engine(api_db)
    try:
        with holder.connect() as holding:
            if "sqlite" in api_db:
                holding.execute(text("UPDATE agents SET name = name"))  # takes the write lock
            else:
                holding.execute(text("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE"))
            with waiter.connect() as waiting:
                if "sqlite" in api_db:
                    waiting.exec_driver_sql("PRAGMA busy_timeout=100")
                    statement = "INSERT INTO agents (name) VALUES ('w')"
                else:
                    waiting.execute(text("SET lock_timeout = '100ms'"))
                    statement = "SELECT * FROM agents"
                with pytest.raises(DBAPIError) as caught:
                    waiting.execute(text(statement))
            holding.rollback()
    finally:
        holder.dispose()
        waiter.dispose()
    assert database_problem(caught.value) is BUSY


@pytest.mark.postgres
def test_a_connection_cut_by_the_server_is_unavailable(postgres_url):
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as victim:
            pid = victim.execute(text("SELECT pg_backend_pid()")).scalar()
            with engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DBAPIError) as caught:
                victim.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert database_problem(caught.value) is UNAVAILABLE


def test_a_bug_answers_500_with_a_json_body(api_db, alice, monkeypatch):
    from orchestrator.api.routes import projects

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(projects, "own_project", broken)
    app = create_app(Settings(database_url=api_db))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/projects/1", headers=alice.headers)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; the server's log has the details"}


# SQLite runs write requests one at a time: it has no such window.
@pytest.mark.parametrize(
    "api_db", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_user_deleted_between_the_token_check_and_the_insert_is_a_conflict(api_db, alice):
    """Deterministically what the race test provokes by chance: the token is valid when checked,
    the user is gone when the project is inserted (PostgreSQL waits on the delete's lock)."""
    app = create_app(Settings(database_url=api_db))
    engine = create_engine(api_db)
    answers = []
    with TestClient(app) as client, engine.connect() as deleting:
        check_every_response(client)
        deleting.execute(text("DELETE FROM users WHERE id = :id"), {"id": alice.id})
        request = threading.Thread(target=lambda: answers.append(
            client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers)))
        request.start()
        with engine.connect() as watch:  # the insert waits for the uncommitted delete
            for _ in range(200):
                waiting = watch.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")).scalar()
                if waiting:
                    break
                watch.rollback()  # pg_stat_activity is read once per transaction
                time.sleep(0.05)
        deleting.commit()
        request.join(timeout=30)
    assert waiting, "the request never waited on the delete"
    assert answers[0].status_code == 409, answers[0].text
    assert "(fk_projects_owner_id_users)" in answers[0].json()["detail"]
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 0
    engine.dispose()


@pytest.mark.postgres
def test_a_claim_whose_connection_the_server_cut_is_503_and_the_next_one_reconnects(
    client, api_db, alice
):
    """PostgreSQL claims run on async connections of their own (`orchestrator.api.aio`): one
    that the server cut answers 503 like any lost connection, and is not used again."""
    if "postgresql" not in api_db:
        pytest.skip("SQLite claims run on the writer engine")
    project = client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers).json()
    for title in ("first", "second"):
        client.post("/api/v1/tasks", json={"project_id": project["id"], "title": title},
                    headers=alice.headers).raise_for_status()
    agent = client.post("/api/v1/agents", json={"name": "a"}, headers=alice.headers).json()
    claim = f"/api/v1/agents/{agent['id']}/claim"
    assert client.post(claim, headers=alice.headers).json()["title"] == "first"
    engine = create_engine(api_db)
    try:
        with engine.connect() as admin:
            # Every other connection to the database: the claim's among them.
            cut = admin.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalar()
    finally:
        engine.dispose()
    assert cut >= 1
    lost = client.post(claim, headers=alice.headers)
    assert lost.status_code == 503
    assert lost.headers["Retry-After"] == "1"
    again = client.post(claim, headers=alice.headers)
    assert again.status_code == 200
    assert again.json()["title"] == "second"
