"""Users: created by admins with a first token, unique by email, changed and deleted by
themselves or an admin."""

from __future__ import annotations

import pytest


def test_creating_a_user_returns_their_first_token(client, admin):
    response = client.post(
        "/api/v1/users", json={"email": "Carol@Example.com", "name": "Carol"}, headers=admin.headers
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["email"], body["is_admin"]) == ("carol@example.com", False)
    carol = {"Authorization": f"Bearer {body['token']}"}
    assert client.get("/api/v1/users/me", headers=carol).json()["id"] == body["id"]


def test_a_duplicate_email_is_409_whatever_its_case(client, admin, alice):
    response = client.post(
        "/api/v1/users", json={"email": "ALICE@example.com", "name": "Again"}, headers=admin.headers
    )
    assert response.status_code == 409
    assert "alice@example.com already exists" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "name": "X"}, "email"),
        ({"email": "x@example.com", "name": ""}, "name"),
        ({"email": "x@example.com", "name": "x" * 201}, "name"),
        ({"email": "x@example.com", "name": "nul\x00byte"}, "name"),
        ({"email": "x@example.com"}, "name"),
        ({"email": "x@example.com", "name": "X", "admin": True}, "admin"),
    ],
)
def test_invalid_input_is_422_naming_the_field(client, alice, body, field):
    response = client.post("/api/v1/users", json=body, headers=alice.headers)
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


def test_users_are_listed_by_id_a_page_at_a_time(client, make_user):
    users = [make_user(admin=i == 0) for i in range(5)]
    headers = users[0].headers
    first = client.get("/api/v1/users?limit=2", headers=headers).json()
    assert [u["id"] for u in first["items"]] == [users[0].id, users[1].id]
    assert first["next_offset"] == 2
    last = client.get("/api/v1/users?limit=2&offset=4", headers=headers).json()
    assert [u["id"] for u in last["items"]] == [users[4].id]
    assert last["next_offset"] is None


def test_a_user_updates_their_own_name_and_email(client, alice):
    response = client.patch(
        f"/api/v1/users/{alice.id}", json={"name": "Alice L.", "email": "ada@example.com"},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["email"]) == ("Alice L.", "ada@example.com")


def test_changing_to_a_taken_email_is_409(client, alice, bob):
    response = client.patch(
        f"/api/v1/users/{alice.id}", json={"email": bob.email}, headers=alice.headers
    )
    assert response.status_code == 409


def test_a_user_cannot_change_or_delete_another(client, alice, bob):
    url = f"/api/v1/users/{bob.id}"
    assert client.patch(url, json={"name": "B"}, headers=alice.headers).status_code == 403
    assert client.delete(f"/api/v1/users/{bob.id}", headers=alice.headers).status_code == 403
    assert client.get(url, headers=alice.headers).status_code == 403
    assert client.get(url, headers=bob.headers).json()["name"] == "Bob"


def test_unknown_user_ids_are_404(client, alice):
    for method in ("GET", "PATCH", "DELETE"):
        response = client.request(method, "/api/v1/users/999", json={}, headers=alice.headers)
        assert response.status_code == 404
        assert response.json()["detail"] == "user 999 not found"


def test_deleting_yourself_removes_your_projects_and_tokens(client, alice, bob):
    project = client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers).json()
    body = {"project_id": project["id"], "title": "t"}
    client.post("/api/v1/tasks", json=body, headers=alice.headers)
    assert client.delete(f"/api/v1/users/{alice.id}", headers=alice.headers).status_code == 204
    assert client.get("/api/v1/users/me", headers=alice.headers).status_code == 401
    assert client.get(f"/api/v1/users/{alice.id}", headers=bob.headers).status_code == 404
    assert client.get("/api/v1/users/me", headers=bob.headers).status_code == 200
