"""Projects: owned by their creator, paginated deterministically, deleted with their tasks."""

from __future__ import annotations


def test_create_read_update_delete_a_project(client, alice):
    made = client.post(
        "/api/v1/projects", json={"name": "Launch", "description": "v1"}, headers=alice.headers
    )
    assert made.status_code == 201
    project = made.json()
    assert project["owner_id"] == alice.id
    url = f"/api/v1/projects/{project['id']}"
    assert client.get(url, headers=alice.headers).json() == project
    changed = client.patch(url, json={"description": None}, headers=alice.headers).json()
    assert (changed["name"], changed["description"]) == ("Launch", None)
    assert client.delete(url, headers=alice.headers).status_code == 204
    assert client.get(url, headers=alice.headers).status_code == 404


def test_a_project_name_cannot_be_set_to_null(client, alice):
    project = client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers).json()
    url = f"/api/v1/projects/{project['id']}"
    response = client.patch(url, json={"name": None}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


def test_deleting_a_project_deletes_its_tasks(client, alice):
    project = client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers).json()
    task = client.post(
        "/api/v1/tasks", json={"project_id": project["id"], "title": "t"}, headers=alice.headers
    ).json()
    client.delete(f"/api/v1/projects/{project['id']}", headers=alice.headers)
    assert client.get(f"/api/v1/tasks/{task['id']}", headers=alice.headers).status_code == 404


def test_projects_are_paginated_by_id(client, alice):
    ids = [
        client.post("/api/v1/projects", json={"name": f"p{i}"}, headers=alice.headers).json()["id"]
        for i in range(5)
    ]
    seen, offset = [], 0
    while offset is not None:
        page = client.get(f"/api/v1/projects?limit=2&offset={offset}", headers=alice.headers).json()
        seen += [p["id"] for p in page["items"]]
        offset = page["next_offset"]
    assert seen == ids


def test_page_size_has_a_maximum(client, alice):
    response = client.get("/api/v1/projects?limit=101", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]
    assert client.get("/api/v1/projects?limit=100", headers=alice.headers).status_code == 200


def test_ids_too_large_for_the_database_are_422_not_500(client, alice):
    response = client.get(f"/api/v1/projects/{2**31}", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "project_id"]
