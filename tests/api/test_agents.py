"""Agents and claiming: the most urgent pending task of your projects, or 204."""

from __future__ import annotations

import pytest


@pytest.fixture
def agent(client, alice) -> dict:
    return client.post("/api/v1/agents", json={"name": "worker"}, headers=alice.headers).json()


@pytest.fixture
def project(client, alice) -> dict:
    return client.post("/api/v1/projects", json={"name": "work"}, headers=alice.headers).json()


def _add(client, user, project, title, level=3):
    body = {"project_id": project["id"], "title": title, "priority_level": level}
    return client.post("/api/v1/tasks", json=body, headers=user.headers).json()


def _claim(client, user, agent, query=""):
    return client.post(f"/api/v1/agents/{agent['id']}/claim{query}", headers=user.headers)


def test_agents_are_created_listed_updated_and_deleted(client, alice, agent):
    assert agent["status"] == "idle"
    listed = client.get("/api/v1/agents", headers=alice.headers).json()
    assert [a["id"] for a in listed["items"]] == [agent["id"]]
    url = f"/api/v1/agents/{agent['id']}"
    busy = client.patch(url, json={"status": "busy"}, headers=alice.headers).json()
    assert busy["status"] == "busy"
    assert client.delete(url, headers=alice.headers).status_code == 204
    assert client.get(url, headers=alice.headers).status_code == 404


def test_an_unknown_agent_status_is_422(client, alice):
    body = {"name": "a", "status": "asleep"}
    response = client.post("/api/v1/agents", json=body, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "status"]


def test_claims_take_the_most_urgent_then_the_oldest(client, alice, agent, project):
    made = [_add(client, alice, project, f"t{i}", level) for i, level in enumerate([3, 2, 5, 2, 1])]
    claimed = []
    while (response := _claim(client, alice, agent)).status_code == 200:
        task = response.json()
        assert (task["status"], task["agent_id"]) == ("in_progress", agent["id"])
        claimed.append(task["id"])
    assert response.status_code == 204
    assert response.content == b""
    by_urgency = sorted(made, key=lambda t: (t["priority_level"], t["created_at"], t["id"]))
    assert claimed == [t["id"] for t in by_urgency]


def test_a_claim_can_be_limited_to_one_project(client, alice, agent, project):
    other = client.post("/api/v1/projects", json={"name": "other"}, headers=alice.headers).json()
    _add(client, alice, project, "urgent elsewhere", 1)
    mine = _add(client, alice, other, "routine here", 4)
    response = _claim(client, alice, agent, f"?project_id={other['id']}")
    assert response.json()["id"] == mine["id"]
    assert _claim(client, alice, agent, f"?project_id={other['id']}").status_code == 204


def test_claiming_with_nothing_pending_is_204(client, alice, agent):
    assert _claim(client, alice, agent).status_code == 204


def test_a_released_task_can_be_claimed_again(client, alice, agent, project):
    task = _add(client, alice, project, "flaky")
    _claim(client, alice, agent)
    client.patch(f"/api/v1/tasks/{task['id']}", json={"status": "pending"}, headers=alice.headers)
    assert _claim(client, alice, agent).json()["id"] == task["id"]


def test_an_offline_agent_cannot_claim(client, alice, agent, project):
    _add(client, alice, project, "t")
    client.patch(f"/api/v1/agents/{agent['id']}", json={"status": "offline"}, headers=alice.headers)
    response = _claim(client, alice, agent)
    assert response.status_code == 409
    assert "offline" in response.json()["detail"]


def test_claiming_for_an_unknown_agent_is_404(client, alice):
    response = client.post("/api/v1/agents/777/claim", headers=alice.headers)
    assert response.status_code == 404
    assert response.json()["detail"] == "agent 777 not found"


def test_an_agent_with_work_in_progress_cannot_be_deleted(client, alice, agent, project):
    task = _add(client, alice, project, "t")
    _claim(client, alice, agent)
    assert client.delete(f"/api/v1/agents/{agent['id']}", headers=alice.headers).status_code == 409
    client.patch(f"/api/v1/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers)
    assert client.delete(f"/api/v1/agents/{agent['id']}", headers=alice.headers).status_code == 204
    # The task keeps its history without the agent.
    after = client.get(f"/api/v1/tasks/{task['id']}", headers=alice.headers).json()
    assert after["agent_id"] is None
