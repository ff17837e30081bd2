"""Concurrent writers: on SQLite they queue for its one writer, and one kept waiting too long
gets a 503 rather than a 500."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from orchestrator import accounts
from orchestrator.api import deps
from orchestrator.api.app import create_app
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager
from orchestrator.settings import Settings
from tests.api.conformance import check_every_response


@pytest.fixture
def sqlite_api(sqlite_url: str, monkeypatch: pytest.MonkeyPatch):
    """(client, auth headers) on a SQLite database whose writer gives up after 0.3 s."""
    monkeypatch.setattr(deps, "_SQLITE_WRITER_TIMEOUT", 0.3)
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
    engine = create_engine(sqlite_url)
    with Session(engine) as session:
        _, token = accounts.create_user(session, "w@example.com", "Writer")
        session.commit()
    engine.dispose()
    with TestClient(create_app(Settings(database_url=sqlite_url))) as client:
        check_every_response(client)  # the 503 and its Retry-After are documented
        yield client, {"Authorization": f"Bearer {token}"}


def test_a_writer_kept_waiting_too_long_gets_503_with_retry_after(sqlite_api):
    client, headers = sqlite_api
    with client.app.state.db.writer.connect():  # someone else holds the one writer connection
        response = client.post("/api/v1/projects", json={"name": "p"}, headers=headers)
        # Reads do not queue behind the writer.
        assert client.get("/api/v1/projects", headers=headers).status_code == 200
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert client.post("/api/v1/projects", json={"name": "p"}, headers=headers).status_code == 201


def test_concurrent_writers_all_succeed(client, alice):
    """On SQLite they take turns at the one writer connection; on PostgreSQL they run at once."""
    headers = alice.headers
    project = client.post("/api/v1/projects", json={"name": "p"}, headers=headers).json()
    codes: list[int] = []

    def writer(i: int) -> None:
        for j in range(5):
            body = {"project_id": project["id"], "title": f"t{i}.{j}"}
            codes.append(client.post("/api/v1/tasks", json=body, headers=headers).status_code)
            # A write request that fails after its first query must release the writer too.
            codes.append(client.patch("/api/v1/tasks/999", json={}, headers=headers).status_code)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(codes)) == [201, 404]
    listed = client.get("/api/v1/tasks?limit=100", headers=headers).json()["items"]
    assert len(listed) == 60
