"""Every /api/v1 route needs a bearer token; tokens are kept as hashes; users see only their own."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db import create_engine
from orchestrator.models import ApiToken


def _api_routes(app) -> list[tuple[str, str]]:
    """(method, path with ids filled in) for every /api/v1 operation in the OpenAPI schema."""
    return sorted(
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/api/v1")
        for method in operations
    )


def test_every_api_route_refuses_a_request_without_a_token(client):
    routes = _api_routes(client.app)
    assert len(routes) >= 20
    for method, path in routes:
        response = client.request(method, path, json={})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header", ["Bearer orch_not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz", "orch_x"]
)
def test_an_unknown_or_malformed_token_is_401(client, alice, header):
    response = client.get("/api/v1/users/me", headers={"Authorization": header})
    assert response.status_code == 401


def test_a_token_identifies_its_user(client, alice):
    response = client.get("/api/v1/users/me", headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"


def test_tokens_are_stored_only_as_their_sha256(client, api_db, alice):
    made = client.post("/api/v1/users/me/tokens", json={"name": "ci"}, headers=alice.headers)
    assert made.status_code == 201
    second = made.json()["token"]
    engine = create_engine(api_db)
    with Session(engine) as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
    engine.dispose()
    stored = {row.token_hash for row in rows}
    for token in (alice.token, second):
        assert hashlib.sha256(token.encode()).hexdigest() in stored
        for row in rows:
            assert token not in (row.token_hash, row.prefix, row.name)


def test_a_token_is_shown_only_when_it_is_made(client, alice):
    made = client.post("/api/v1/users/me/tokens", json={"name": "laptop"}, headers=alice.headers)
    token = made.json()["token"]
    listed = client.get("/api/v1/users/me/tokens", headers=alice.headers).json()["items"]
    assert [item["name"] for item in listed] == ["first token", "laptop"]
    assert all("token" not in item for item in listed)
    assert token.startswith(listed[1]["prefix"])
    new_headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/users/me", headers=new_headers).status_code == 200


def test_a_revoked_token_stops_working(client, alice):
    made = client.post(
        "/api/v1/users/me/tokens", json={"name": "spare"}, headers=alice.headers
    ).json()
    headers = {"Authorization": f"Bearer {made['token']}"}
    revoked = client.delete(f"/api/v1/users/me/tokens/{made['id']}", headers=alice.headers)
    assert revoked.status_code == 204
    assert client.get("/api/v1/users/me", headers=headers).status_code == 401
    assert client.get("/api/v1/users/me", headers=alice.headers).status_code == 200


def test_a_user_cannot_revoke_another_users_token(client, alice, bob):
    bobs = client.get("/api/v1/users/me/tokens", headers=bob.headers).json()["items"][0]
    response = client.delete(f"/api/v1/users/me/tokens/{bobs['id']}", headers=alice.headers)
    assert response.status_code == 404
    assert client.get("/api/v1/users/me", headers=bob.headers).status_code == 200


def test_health_detail_needs_a_token_but_liveness_and_readiness_do_not(client, alice):
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 200
    assert client.get("/health").status_code == 401
    detail = client.get("/health", headers=alice.headers)
    assert detail.status_code == 200
    assert detail.json()["schema"]["up_to_date"] is True


def test_users_see_and_change_only_their_own_projects_and_tasks(client, alice, bob):
    project = client.post("/api/v1/projects", json={"name": "secret"}, headers=alice.headers).json()
    task = client.post(
        "/api/v1/tasks", json={"project_id": project["id"], "title": "plan"}, headers=alice.headers
    ).json()
    agent = client.post("/api/v1/agents", json={"name": "bobs agent"}, headers=bob.headers).json()
    as_bob = bob.headers

    assert client.get("/api/v1/projects", headers=as_bob).json()["items"] == []
    assert client.get("/api/v1/tasks", headers=as_bob).json()["items"] == []
    for method, path, body in [
        ("GET", f"/api/v1/projects/{project['id']}", None),
        ("PATCH", f"/api/v1/projects/{project['id']}", {"name": "mine now"}),
        ("DELETE", f"/api/v1/projects/{project['id']}", None),
        ("GET", f"/api/v1/tasks/{task['id']}", None),
        ("PATCH", f"/api/v1/tasks/{task['id']}", {"status": "in_progress"}),
        ("DELETE", f"/api/v1/tasks/{task['id']}", None),
        ("GET", f"/api/v1/tasks?project_id={project['id']}", None),
        ("POST", "/api/v1/tasks", {"project_id": project["id"], "title": "sneaky"}),
        ("POST", f"/api/v1/agents/{agent['id']}/claim?project_id={project['id']}", None),
    ]:
        response = client.request(method, path, json=body, headers=as_bob)
        assert response.status_code == 404, (method, path)
        assert "not found" in response.json()["detail"]

    # Bob's agent claims only Bob's work: Alice's pending task stays hers.
    assert client.post(f"/api/v1/agents/{agent['id']}/claim", headers=as_bob).status_code == 204
    still = client.get(f"/api/v1/tasks/{task['id']}", headers=alice.headers).json()
    assert (still["status"], still["title"]) == ("pending", "plan")
    mine = client.get(f"/api/v1/projects/{project['id']}", headers=alice.headers).json()
    assert mine["name"] == "secret"
