"""Paging: every list by cursor (keyset), stable under inserts and deletes; offsets capped."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from orchestrator.api.schemas import MAX_OFFSET
from orchestrator.db import create_engine
from orchestrator.models import Task


def _walk(client, user, path: str, limit: int = 2, **query) -> list[dict]:
    """Every item of a list, page by page through `next_cursor`."""
    seen: list[dict] = []
    params: dict = {"limit": limit, **query}
    while True:
        page = client.get(path, params=params, headers=user.headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["next_offset"] is None or "cursor" not in params
        seen += body["items"]
        if body["next_cursor"] is None:
            return seen
        params = {**params, "cursor": body["next_cursor"]}


def _all(client, user, path: str, **query) -> list[dict]:
    """The whole list in one page, in the server's own order."""
    body = client.get(path, params={"limit": 100, **query}, headers=user.headers).json()
    assert body["next_cursor"] is None
    return body["items"]


@pytest.fixture
def project(client, alice) -> dict:
    return client.post("/api/v1/projects", json={"name": "work"}, headers=alice.headers).json()


@pytest.fixture
def tasks(client, api_db, alice, project) -> list[dict]:
    """Tasks of every priority, some made in the same second (ties broken by id), and some
    stored with microseconds, as code other than the API may store them."""
    for i in range(9):
        body = {"project_id": project["id"], "title": f"api {i}", "priority_level": 1 + i % 3}
        client.post("/api/v1/tasks", json=body, headers=alice.headers)
    engine = create_engine(api_db)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with Session(engine) as session:
        session.execute(insert(Task), [
            {"project_id": project["id"], "title": f"stored {i}", "priority_level": 1 + i % 3,
             "created_at": now - dt.timedelta(seconds=10) + dt.timedelta(microseconds=i * 250_001)}
            for i in range(7)
        ])
        session.commit()
    engine.dispose()
    return _all(client, alice, "/api/v1/tasks")


def test_a_cursor_walks_the_tasks_in_their_order(client, alice, tasks):
    assert len(tasks) == 16
    for limit in (1, 2, 5, 16, 100):
        assert _walk(client, alice, "/api/v1/tasks", limit) == tasks
    pending_1 = _all(client, alice, "/api/v1/tasks", priority_level=1, status="pending")
    assert _walk(client, alice, "/api/v1/tasks", 2, priority_level=1, status="pending") == pending_1


def test_a_cursor_walks_every_other_list(client, admin, make_user):
    for i in range(4):
        make_user()
        client.post("/api/v1/projects", json={"name": f"p{i}"}, headers=admin.headers)
        client.post("/api/v1/agents", json={"name": f"a{i}"}, headers=admin.headers)
        client.post("/api/v1/users/me/tokens", json={"name": f"t{i}"}, headers=admin.headers)
    for path in ("/api/v1/users", "/api/v1/projects", "/api/v1/agents", "/api/v1/users/me/tokens"):
        everything = _all(client, admin, path)
        assert len(everything) >= 4
        assert [item["id"] for item in everything] == sorted(item["id"] for item in everything)
        assert _walk(client, admin, path, 2) == everything


def test_a_cursor_is_stable_under_inserts_and_deletes(client, alice, project, tasks):
    first = client.get("/api/v1/tasks", params={"limit": 8}, headers=alice.headers).json()
    assert [t["id"] for t in first["items"]] == [t["id"] for t in tasks[:8]]
    assert first["items"][-1]["priority_level"] == 2
    # Meanwhile: urgent tasks land before the cursor, routine ones after it, and a task
    # already listed and one not yet listed are deleted.
    for level in (1, 1, 5):
        client.post("/api/v1/tasks", json={"project_id": project["id"], "title": "new",
                                           "priority_level": level}, headers=alice.headers)
    for gone in (tasks[2], tasks[10]):
        client.delete(f"/api/v1/tasks/{gone['id']}", headers=alice.headers)
    rest = _walk(client, alice, "/api/v1/tasks", 4, cursor=first["next_cursor"])
    listed = [t["id"] for t in first["items"]] + [t["id"] for t in rest]
    assert len(listed) == len(set(listed)), "a task was listed twice"
    unseen = {t["id"] for t in tasks[8:]} - {tasks[10]["id"]}
    assert unseen <= set(listed), "a task that was there all along was skipped"
    assert tasks[10]["id"] not in listed
    # By offset, the same inserts would have shifted every later page.
    assert [t["title"] for t in rest].count("new") == 1  # only the routine one sorts after


def test_offsets_stop_at_the_cap_and_point_to_the_cursor(client, alice, project):
    response = client.get("/api/v1/tasks", params={"offset": MAX_OFFSET + 1}, headers=alice.headers)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["query", "offset"]
    assert error["msg"].startswith(f"is at most {MAX_OFFSET}") and "`cursor`" in error["msg"]
    assert client.get("/api/v1/tasks", params={"offset": MAX_OFFSET},
                      headers=alice.headers).status_code == 200
    description = client.app.openapi()["paths"]["/api/v1/tasks"]["get"]["parameters"]
    offset = next(p for p in description if p["name"] == "offset")
    assert offset["schema"]["maximum"] == MAX_OFFSET and "cursor" in offset["description"]


def test_a_page_by_offset_also_gives_the_cursor_to_go_on(client, alice, tasks):
    page = client.get("/api/v1/tasks", params={"limit": 5, "offset": 5},
                      headers=alice.headers).json()
    assert page["next_offset"] == 10
    rest = _walk(client, alice, "/api/v1/tasks", 5, cursor=page["next_cursor"])
    assert [t["id"] for t in page["items"] + rest] == [t["id"] for t in tasks[5:]]


def _cursor(document) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("cursor", "message"),
    [
        ("not-a-cursor", "is not a cursor this API gave"),
        ("%%%", "is not a cursor this API gave"),
        (_cursor([1, 2]), "is not a cursor this API gave"),
        (_cursor({"v": 1, "list": "tasks", "after": [1, "2026-01-01 00:00:00"]}),
         "is not a cursor this API gave"),
        (_cursor({"v": 1, "list": "tasks", "after": [2**40, "2026-01-01", 1]}),
         "is not a cursor this API gave"),
        (_cursor({"v": 1, "list": "tasks", "after": [1, 5, 1]}), "is not a cursor this API gave"),
        (_cursor({"v": 1, "list": "tasks", "after": [1, "x" * 100, 1]}),
         "is not a cursor this API gave"),
        (_cursor({"v": 1, "list": "tasks", "after": [True, "2026-01-01", 1]}),
         "is not a cursor this API gave"),
        (_cursor({"v": 1, "list": "projects", "after": [3]}), "belongs to another list"),
    ],
)
def test_a_damaged_or_foreign_cursor_is_422_naming_it(client, alice, cursor, message):
    response = client.get("/api/v1/tasks", params={"cursor": cursor}, headers=alice.headers)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["query", "cursor"] and message in error["msg"]


def test_a_cursor_and_an_offset_together_are_422(client, alice, tasks):
    cursor = client.get("/api/v1/tasks", params={"limit": 2},
                        headers=alice.headers).json()["next_cursor"]
    response = client.get("/api/v1/tasks", params={"cursor": cursor, "offset": 2},
                          headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "give either offset or cursor, not both"
