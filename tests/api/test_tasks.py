"""Tasks: the status machine, filters, and the order most urgent first."""

from __future__ import annotations

import itertools
import json

import pytest

from orchestrator.api.routes.tasks import ALLOWED_MOVES

STATUSES = ["pending", "in_progress", "done", "failed"]


@pytest.fixture
def project(client, alice) -> dict:
    return client.post("/api/v1/projects", json={"name": "work"}, headers=alice.headers).json()


@pytest.fixture
def add_task(client, alice, project):
    def add(title: str = "task", **fields) -> dict:
        body = {"project_id": project["id"], "title": title, **fields}
        response = client.post("/api/v1/tasks", json=body, headers=alice.headers)
        assert response.status_code == 201, response.text
        return response.json()

    return add


def _move(client, user, task: dict, status: str, **fields):
    url = f"/api/v1/tasks/{task['id']}"
    return client.patch(url, json={"status": status, **fields}, headers=user.headers)


@pytest.fixture
def agent(client, alice) -> dict:
    return client.post("/api/v1/agents", json={"name": "worker"}, headers=alice.headers).json()


def _task_in(client, alice, add_task, agent, status: str) -> dict:
    task = add_task()
    path = {"pending": [], "in_progress": ["in_progress"], "done": ["in_progress", "done"],
            "failed": ["in_progress", "failed"]}[status]
    for step in path:
        fields = {"agent_id": agent["id"]} if step == "in_progress" else {}
        assert _move(client, alice, task, step, **fields).status_code == 200
    return task


def test_a_new_task_is_pending_with_priority_3(add_task):
    task = add_task()
    assert (task["status"], task["priority_level"], task["agent_id"]) == ("pending", 3, None)


@pytest.mark.parametrize(
    ("start", "target"),
    [pair for pair in itertools.product(STATUSES, STATUSES) if pair[0] != pair[1]],
)
def test_status_moves_follow_the_machine(client, alice, add_task, agent, start, target):
    task = _task_in(client, alice, add_task, agent, start)
    fields = {"agent_id": agent["id"]} if target == "in_progress" else {}
    response = _move(client, alice, task, target, **fields)
    allowed = [status.value for status in ALLOWED_MOVES[start]]
    if target in allowed:
        assert response.status_code == 200
        assert response.json()["status"] == target
    else:
        assert response.status_code == 409
        detail = response.json()["detail"]
        if start in ("done", "failed"):
            assert f"is {start}, which is final" in detail
        else:
            assert f"from {start} to {target}" in detail
        assert f"allowed moves from {start}: {', '.join(allowed) or 'none'}" in detail
        after = client.get(f"/api/v1/tasks/{task['id']}", headers=alice.headers).json()
        assert after["status"] == start


def test_the_status_machine_is_the_one_the_issue_describes():
    assert {k.value: [v.value for v in vs] for k, vs in ALLOWED_MOVES.items()} == {
        "pending": ["in_progress"],
        "in_progress": ["done", "failed", "pending"],
        "done": [],
        "failed": [],
    }


def test_releasing_a_task_clears_its_agent(client, alice, add_task, agent):
    task = add_task()
    claimed = client.post(f"/api/v1/agents/{agent['id']}/claim", headers=alice.headers).json()
    assert (claimed["id"], claimed["agent_id"]) == (task["id"], agent["id"])
    released = _move(client, alice, task, "pending").json()
    assert (released["status"], released["agent_id"]) == ("pending", None)


def test_starting_a_task_with_an_unknown_agent_is_404(client, alice, add_task):
    task = add_task()
    response = _move(client, alice, task, "in_progress", agent_id=999)
    assert response.status_code == 404
    assert response.json()["detail"] == "agent 999 not found"


def test_tasks_are_listed_most_urgent_first_then_oldest(client, alice, add_task):
    made = [add_task(f"t{i}", priority_level=level) for i, level in enumerate([3, 1, 5, 1, 3, 2])]
    listed = client.get("/api/v1/tasks", headers=alice.headers).json()["items"]
    expected = sorted(made, key=lambda t: (t["priority_level"], t["created_at"], t["id"]))
    assert [t["id"] for t in listed] == [t["id"] for t in expected]


def test_tasks_filter_by_project_status_agent_and_priority(client, alice, add_task):
    other = client.post("/api/v1/projects", json={"name": "other"}, headers=alice.headers).json()
    agent = client.post("/api/v1/agents", json={"name": "a"}, headers=alice.headers).json()
    urgent = add_task("urgent", priority_level=1)
    elsewhere = add_task("elsewhere", project_id=other["id"], priority_level=4)
    later = add_task("later", priority_level=5)
    client.post(f"/api/v1/agents/{agent['id']}/claim", headers=alice.headers)  # takes "urgent"

    def ids(query: str) -> list[int]:
        response = client.get(f"/api/v1/tasks?{query}", headers=alice.headers)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["items"]]

    assert ids(f"project_id={other['id']}") == [elsewhere["id"]]
    assert ids("status=pending") == [elsewhere["id"], later["id"]]
    assert ids("status=in_progress") == [urgent["id"]]
    assert ids(f"agent_id={agent['id']}") == [urgent["id"]]
    assert ids("priority_level=5") == [later["id"]]
    assert ids(f"status=pending&priority_level=4&project_id={other['id']}") == [elsewhere["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=paused", "status"), ("priority_level=0", "priority_level"),
     ("project_id=0", "project_id"), ("agent_id=abc", "agent_id"), ("offset=-1", "offset")],
)
def test_bad_filters_are_422_naming_the_parameter(client, alice, query, field):
    response = client.get(f"/api/v1/tasks?{query}", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"priority_level": 6}, "priority_level"), ({"title": ""}, "title"),
     ({"title": "x" * 501}, "title"), ({"title": "bad \ud800 text"}, "title")],
)
def test_invalid_task_fields_are_422_naming_the_field(client, alice, project, fields, field):
    body = {"project_id": project["id"], "title": "t", **fields}
    # json.dumps escapes a lone surrogate as \\ud800, as a client in another language might send it.
    response = client.post(
        "/api/v1/tasks",
        content=json.dumps(body),
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_unknown_task_ids_are_404(client, alice):
    for method in ("GET", "PATCH", "DELETE"):
        response = client.request(method, "/api/v1/tasks/424242", json={}, headers=alice.headers)
        assert response.status_code == 404
        assert response.json()["detail"] == "task 424242 not found"


def test_a_task_is_edited_and_deleted(client, alice, add_task):
    task = add_task(description="first")
    url = f"/api/v1/tasks/{task['id']}"
    body = {"title": "renamed", "priority_level": 1}
    edited = client.patch(url, json=body, headers=alice.headers).json()
    assert (edited["title"], edited["priority_level"]) == ("renamed", 1)
    assert edited["description"] == "first"
    assert client.delete(url, headers=alice.headers).status_code == 204
    assert client.get(url, headers=alice.headers).status_code == 404
