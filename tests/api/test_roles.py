"""Admins and members, agents with owners, tokens a user lists and revokes: the access matrix.

403 is for what exists but is not the caller's to manage (users, for a member); 404 for other
users' data (projects, tasks, agents, tokens), for admins too, as for an unknown id.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from orchestrator.db import create_engine


@pytest.fixture
def world(client, admin, alice, bob) -> dict:
    """Alice's project, pending task and agent; Bob's agent; every id the matrix probes."""
    project = client.post("/api/v1/projects", json={"name": "a"}, headers=alice.headers).json()
    task = client.post(
        "/api/v1/tasks", json={"project_id": project["id"], "title": "t"}, headers=alice.headers
    ).json()
    agent = client.post("/api/v1/agents", json={"name": "alices"}, headers=alice.headers).json()
    bobs_agent = client.post("/api/v1/agents", json={"name": "bobs"}, headers=bob.headers).json()
    token = client.get("/api/v1/users/me/tokens", headers=alice.headers).json()["items"][0]
    return {"project": project, "task": task, "agent": agent, "bobs_agent": bobs_agent,
            "token": token}


def _alices_data(world: dict) -> list[tuple[str, str, dict | None]]:
    project, task, agent = world["project"]["id"], world["task"]["id"], world["agent"]["id"]
    return [
        ("GET", f"/api/v1/projects/{project}", None),
        ("PATCH", f"/api/v1/projects/{project}", {"name": "taken"}),
        ("DELETE", f"/api/v1/projects/{project}", None),
        ("GET", f"/api/v1/tasks/{task}", None),
        ("PATCH", f"/api/v1/tasks/{task}", {"title": "taken"}),
        ("DELETE", f"/api/v1/tasks/{task}", None),
        ("POST", "/api/v1/tasks", {"project_id": project, "title": "sneaky"}),
        ("GET", f"/api/v1/agents/{agent}", None),
        ("PATCH", f"/api/v1/agents/{agent}", {"status": "offline"}),
        ("DELETE", f"/api/v1/agents/{agent}", None),
        ("POST", f"/api/v1/agents/{agent}/claim", None),
        ("DELETE", f"/api/v1/users/me/tokens/{world['token']['id']}", None),
    ]


@pytest.mark.parametrize("who", ["bob", "admin"])
def test_another_users_projects_tasks_agents_and_tokens_are_404(client, world, alice, who,
                                                                request):
    caller = request.getfixturevalue(who)
    for method, path, body in _alices_data(world):
        response = client.request(method, path, json=body, headers=caller.headers)
        assert response.status_code == 404, (who, method, path)
        assert "not found" in response.json()["detail"]
    # Nothing of Alice's changed, and nothing of hers is listed for the others.
    assert client.get(f"/api/v1/tasks/{world['task']['id']}", headers=alice.headers).json()[
        "status"] == "pending"
    assert client.get(f"/api/v1/agents/{world['agent']['id']}", headers=alice.headers).json()[
        "name"] == "alices"
    for path in ("/api/v1/projects", "/api/v1/tasks", "/api/v1/agents"):
        items = client.get(path, headers=caller.headers).json()["items"]
        assert all(item.get("owner_id") != alice.id for item in items)
        assert world["agent"]["id"] not in [item["id"] for item in items]


def test_a_member_gets_403_for_managing_users_and_404_for_unknown_ones(client, alice, bob):
    as_alice = alice.headers
    assert client.post("/api/v1/users", json={"email": "c@example.com", "name": "C"},
                       headers=as_alice).status_code == 403
    assert client.get("/api/v1/users", headers=as_alice).status_code == 403
    for method, body in (("GET", None), ("PATCH", {"name": "B"}), ("DELETE", None)):
        assert client.request(method, f"/api/v1/users/{bob.id}", json=body,
                              headers=as_alice).status_code == 403
        assert client.request(method, "/api/v1/users/9999", json=body,
                              headers=as_alice).status_code == 404
    # Not even themself: promotion is for admins.
    promote = client.patch(f"/api/v1/users/{alice.id}", json={"is_admin": True}, headers=as_alice)
    assert promote.status_code == 403
    me = client.get("/api/v1/users/me", headers=as_alice).json()
    assert (me["id"], me["is_admin"]) == (alice.id, False)


def test_an_admin_creates_lists_promotes_demotes_and_deletes_users(client, admin, alice, bob):
    as_admin = admin.headers
    made = client.post("/api/v1/users", json={"email": "c@example.com", "name": "C",
                                              "is_admin": True}, headers=as_admin)
    assert made.status_code == 201 and made.json()["is_admin"] is True
    listed = client.get("/api/v1/users", headers=as_admin).json()["items"]
    assert [u["email"] for u in listed] == [
        "root@example.com", "alice@example.com", "bob@example.com", "c@example.com"]
    assert client.get(f"/api/v1/users/{bob.id}", headers=as_admin).json()["name"] == "Bob"
    promoted = client.patch(f"/api/v1/users/{alice.id}", json={"is_admin": True},
                            headers=as_admin)
    assert promoted.json()["is_admin"] is True
    # Alice, an admin now, may list users (her role is read on each request).
    assert client.get("/api/v1/users", headers=alice.headers).status_code == 200
    demoted = client.patch(f"/api/v1/users/{alice.id}", json={"is_admin": False},
                           headers=as_admin)
    assert demoted.json()["is_admin"] is False
    assert client.get("/api/v1/users", headers=alice.headers).status_code == 403
    assert client.delete(f"/api/v1/users/{bob.id}", headers=as_admin).status_code == 204
    assert client.get("/api/v1/users/me", headers=bob.headers).status_code == 401


def test_the_last_admin_cannot_be_demoted_or_deleted(client, admin, alice):
    url = f"/api/v1/users/{admin.id}"
    for method, body in (("PATCH", {"is_admin": False}), ("DELETE", None)):
        response = client.request(method, url, json=body, headers=admin.headers)
        assert response.status_code == 409
        assert "only admin" in response.json()["detail"]
    client.patch(f"/api/v1/users/{alice.id}", json={"is_admin": True}, headers=admin.headers)
    assert client.patch(url, json={"is_admin": False}, headers=admin.headers).status_code == 200
    assert client.delete(url, headers=alice.headers).status_code == 204


def test_an_agent_claims_only_its_owners_tasks(client, world, alice, bob):
    bobs_project = client.post("/api/v1/projects", json={"name": "b"}, headers=bob.headers).json()
    client.post("/api/v1/tasks", json={"project_id": bobs_project["id"], "title": "bobs"},
                headers=bob.headers)
    # Bob's agent sees Bob's task only; Alice's stays pending.
    claimed = client.post(f"/api/v1/agents/{world['bobs_agent']['id']}/claim",
                          headers=bob.headers)
    assert claimed.json()["project_id"] == bobs_project["id"]
    assert client.post(f"/api/v1/agents/{world['bobs_agent']['id']}/claim",
                       headers=bob.headers).status_code == 204
    # Alice cannot claim with Bob's agent, nor give her task to it.
    assert client.post(f"/api/v1/agents/{world['bobs_agent']['id']}/claim",
                       headers=alice.headers).status_code == 404
    given = client.patch(f"/api/v1/tasks/{world['task']['id']}",
                         json={"status": "in_progress", "agent_id": world["bobs_agent"]["id"]},
                         headers=alice.headers)
    assert given.status_code == 404 and given.json()["detail"].startswith("agent ")
    mine = client.post(f"/api/v1/agents/{world['agent']['id']}/claim", headers=alice.headers)
    assert mine.json()["id"] == world["task"]["id"]
    assert world["agent"]["owner_id"] == alice.id


def test_tokens_list_when_they_were_last_used_and_never_the_secret(client, api_db, alice):
    before = client.get("/api/v1/users/me/tokens", headers=alice.headers).json()["items"]
    assert [set(t) for t in before] == [{"id", "name", "prefix", "created_at", "last_used_at"}]
    assert alice.token not in str(before)
    # The listing request itself used the token.
    used = before[0]["last_used_at"]
    assert used is not None
    assert dt.datetime.fromisoformat(used) >= dt.datetime.fromisoformat(before[0]["created_at"])
    # Within the minute, requests do not write it again.
    engine = create_engine(api_db)
    with engine.begin() as connection:
        connection.execute(text("UPDATE api_tokens SET last_used_at = :at"),
                           {"at": dt.datetime(2026, 1, 1, 0, 0, 30, tzinfo=dt.UTC)})
    engine.dispose()
    again = client.get("/api/v1/users/me/tokens", headers=alice.headers).json()["items"][0]
    assert dt.datetime.fromisoformat(again["last_used_at"]) > dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def test_a_revoked_token_is_401_at_once_everywhere(client, world, alice):
    spare = client.post("/api/v1/users/me/tokens", json={"name": "spare"},
                        headers=alice.headers).json()
    headers = {"Authorization": f"Bearer {spare['token']}"}
    assert client.get("/api/v1/projects", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/users/me/tokens/{spare['id']}",
                         headers=headers).status_code == 204
    for method, path, body in [*_alices_data(world), ("GET", "/api/v1/users/me", None),
                               ("GET", "/api/v1/users/me/tokens", None),
                               ("GET", "/api/v1/agents", None)]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path)
    assert client.get("/api/v1/users/me", headers=alice.headers).status_code == 200


def test_a_request_does_not_wait_to_record_its_tokens_use(client, api_db, alice):
    """SQLite: with the file's write lock taken, the use is left to a later request."""
    if not api_db.startswith("sqlite"):
        pytest.skip("PostgreSQL writes the row in autocommit, without a file lock")
    engine = create_engine(api_db)
    with engine.execution_options(sqlite_begin="BEGIN IMMEDIATE").begin() as holder:
        assert client.get("/api/v1/projects", headers=alice.headers).status_code == 200
        assert holder.execute(text("SELECT last_used_at FROM api_tokens")).scalar() is None
    engine.dispose()
    tokens = client.get("/api/v1/users/me/tokens", headers=alice.headers).json()["items"]
    assert tokens[0]["last_used_at"] is not None
