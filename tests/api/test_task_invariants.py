"""The task invariants (docs/api.md): in progress exactly when an agent holds it, work only for
agents that can do it, done and failed final. Each refusal is a 409 that names the allowed
moves, and leaves the task as it was."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db import create_engine
from orchestrator.models import Agent, Task

FIELDS_OF_A_FINISHED_TASK = [
    {"title": "renamed"},
    {"description": "more"},
    {"priority_level": 1},
    {"agent_id": "other"},
    {"agent_id": None},
    {"status": "pending"},
]


@pytest.fixture
def project(client, alice) -> dict:
    return client.post("/api/v1/projects", json={"name": "work"}, headers=alice.headers).json()


@pytest.fixture
def new_agent(client, alice):
    def make(name: str = "worker", status: str = "idle") -> dict:
        body = {"name": name, "status": status}
        return client.post("/api/v1/agents", json=body, headers=alice.headers).json()

    return make


@pytest.fixture
def task(client, alice, project) -> dict:
    body = {"project_id": project["id"], "title": "t", "description": "d"}
    return client.post("/api/v1/tasks", json=body, headers=alice.headers).json()


def _patch(client, user, task: dict, **fields):
    return client.patch(f"/api/v1/tasks/{task['id']}", json=fields, headers=user.headers)


def _read(client, user, task: dict) -> dict:
    return client.get(f"/api/v1/tasks/{task['id']}", headers=user.headers).json()


def _refused(response, *phrases: str) -> str:
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert "allowed moves from" in detail
    for phrase in phrases:
        assert phrase in detail
    return detail


def test_a_task_does_not_start_without_an_agent(client, alice, task):
    _refused(_patch(client, alice, task, status="in_progress"), "needs an agent",
             "allowed moves from pending: in_progress")
    assert _read(client, alice, task) == task


def test_a_pending_task_is_not_given_an_agent_without_starting(client, alice, task, new_agent):
    agent = new_agent()
    _refused(_patch(client, alice, task, agent_id=agent["id"]), "a pending task has none",
             f'{{"status": "in_progress", "agent_id": {agent["id"]}}}')
    assert _read(client, alice, task)["agent_id"] is None


def test_a_task_starts_with_an_agent_that_can_work(client, alice, task, new_agent):
    agent = new_agent(status="busy")
    started = _patch(client, alice, task, status="in_progress", agent_id=agent["id"])
    assert started.status_code == 200
    assert (started.json()["status"], started.json()["agent_id"]) == ("in_progress", agent["id"])


def test_an_offline_agent_is_given_no_work(client, alice, project, task, new_agent):
    offline = new_agent("asleep", status="offline")
    response = _patch(client, alice, task, status="in_progress", agent_id=offline["id"])
    assert response.status_code == 409
    assert f"agent {offline['id']} is offline" in response.json()["detail"]
    assert _read(client, alice, task) == task
    # Nor handed one that another agent holds.
    working = new_agent()
    _patch(client, alice, task, status="in_progress", agent_id=working["id"])
    response = _patch(client, alice, task, agent_id=offline["id"])
    assert response.status_code == 409
    assert _read(client, alice, task)["agent_id"] == working["id"]


def test_a_task_in_progress_is_handed_to_another_agent_that_can_work(client, alice, task,
                                                                      new_agent):
    first, second = new_agent("first"), new_agent("second")
    _patch(client, alice, task, status="in_progress", agent_id=first["id"])
    handed = _patch(client, alice, task, agent_id=second["id"])
    assert handed.status_code == 200
    assert (handed.json()["status"], handed.json()["agent_id"]) == ("in_progress", second["id"])


def test_a_task_in_progress_does_not_lose_its_agent_except_by_release(client, alice, task,
                                                                       new_agent):
    agent = new_agent()
    _patch(client, alice, task, status="in_progress", agent_id=agent["id"])
    _refused(_patch(client, alice, task, agent_id=None), "needs an agent", '{"status": "pending"}')
    assert _read(client, alice, task)["agent_id"] == agent["id"]
    _refused(_patch(client, alice, task, status="pending", agent_id=agent["id"]),
             "cannot be pending with an agent")
    released = _patch(client, alice, task, status="pending")
    assert (released.json()["status"], released.json()["agent_id"]) == ("pending", None)


def test_a_task_ends_with_the_agent_that_held_it(client, alice, task, new_agent):
    agent, other = new_agent("holder"), new_agent("other")
    _patch(client, alice, task, status="in_progress", agent_id=agent["id"])
    _refused(_patch(client, alice, task, status="done", agent_id=other["id"]),
             f"ends with the agent that held it ({agent['id']})")
    done = _patch(client, alice, task, status="done", agent_id=agent["id"])
    assert (done.json()["status"], done.json()["agent_id"]) == ("done", agent["id"])


@pytest.mark.parametrize("final", ["done", "failed"])
def test_a_finished_task_no_longer_changes(client, alice, project, new_agent, final):
    agent, other = new_agent("holder"), new_agent("other")
    for change in FIELDS_OF_A_FINISHED_TASK:
        body = {"project_id": project["id"], "title": "t", "description": "d"}
        task = client.post("/api/v1/tasks", json=body, headers=alice.headers).json()
        _patch(client, alice, task, status="in_progress", agent_id=agent["id"])
        finished = _patch(client, alice, task, status=final).json()
        change = {k: other["id"] if v == "other" else v for k, v in change.items()}
        _refused(_patch(client, alice, task, **change), f"is {final}, which is final",
                 f"allowed moves from {final}: none")
        assert _read(client, alice, task) == finished, change


def test_resending_a_finished_tasks_present_values_succeeds(client, alice, task, new_agent):
    """An agent that retries "done" after a lost reply is told it is done, not refused."""
    agent = new_agent()
    _patch(client, alice, task, status="in_progress", agent_id=agent["id"])
    done = _patch(client, alice, task, status="done").json()
    again = _patch(client, alice, task, status="done", agent_id=agent["id"], title="t")
    assert again.status_code == 200
    assert again.json() == done


def test_an_agent_holding_work_does_not_go_offline(client, alice, project, new_agent):
    agent = new_agent()
    body = {"project_id": project["id"], "title": "t"}
    held = [client.post("/api/v1/tasks", json=body, headers=alice.headers).json() for _ in range(2)]
    for _ in held:
        client.post(f"/api/v1/agents/{agent['id']}/claim", headers=alice.headers)
    url = f"/api/v1/agents/{agent['id']}"
    response = client.patch(url, json={"status": "offline"}, headers=alice.headers)
    assert response.status_code == 409
    detail = response.json()["detail"]
    ids = f"{held[0]['id']}, {held[1]['id']}"
    assert f"agent {agent['id']} holds 2 tasks in progress ({ids})" in detail
    assert client.get(url, headers=alice.headers).json()["status"] == "idle"
    for task in held:
        _patch(client, alice, task, status="pending")
    assert client.patch(url, json={"status": "offline"}, headers=alice.headers).status_code == 200


def test_the_invariants_hold_through_random_traffic(client, api_db, alice, project, new_agent):
    """A few hundred random edits, moves, claims and agent changes: after every answer the
    stored tasks keep the invariants, and a finished task never changes again."""
    rng = random.Random(19)
    agents = [new_agent(f"a{i}")["id"] for i in range(3)] + [999]
    body = {"project_id": project["id"], "title": "t"}
    tasks = [client.post("/api/v1/tasks", json=body, headers=alice.headers).json()["id"]
             for _ in range(6)]
    engine = create_engine(api_db)
    finished: dict[int, tuple] = {}
    statuses: set[int] = set()
    try:
        for _ in range(300):
            kind = rng.choice(["edit", "edit", "claim", "agent"])
            if kind == "edit":
                fields = {}
                for name, values in [("status", ["pending", "in_progress", "done", "failed"]),
                                     ("agent_id", [*agents, None]),
                                     ("priority_level", [1, 5]), ("title", ["x", "y"])]:
                    if rng.random() < 0.5:
                        fields[name] = rng.choice(values)
                response = client.patch(f"/api/v1/tasks/{rng.choice(tasks)}", json=fields,
                                        headers=alice.headers)
            elif kind == "claim":
                response = client.post(f"/api/v1/agents/{rng.choice(agents)}/claim",
                                       headers=alice.headers)
            else:
                status = rng.choice(["idle", "busy", "offline"])
                response = client.patch(f"/api/v1/agents/{rng.choice(agents[:3])}",
                                        json={"status": status}, headers=alice.headers)
            statuses.add(response.status_code)
            assert response.status_code in (200, 204, 404, 409), response.text
            with Session(engine) as session:
                offline = set(session.scalars(select(Agent.id).where(Agent.status == "offline")))
                for row in session.scalars(select(Task)):
                    state = (row.status, row.agent_id, row.title, row.priority_level)
                    if row.status == "pending":
                        assert row.agent_id is None, state
                    elif row.status == "in_progress":
                        assert row.agent_id is not None and row.agent_id not in offline, state
                    elif row.id in finished:
                        assert finished[row.id] == state
                    else:
                        finished[row.id] = state
    finally:
        engine.dispose()
    # The walk really went through refusals and successes.
    assert {200, 409} <= statuses
    assert finished
