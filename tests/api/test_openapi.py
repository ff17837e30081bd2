"""The OpenAPI document lists every status each operation answers, with its schema and headers.

Every test under tests/api that uses the `client` fixture also checks each answer it gets
against the document (tests/api/conformance.py), and the fuzz run does the same with generated
requests; the tests here add what ordinary traffic does not produce: a database that is not
migrated, busy, or changed under the running server.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.settings import load_settings
from tests.api.conformance import assert_conforms, check_every_response

# A body each operation accepts, so that nothing but the database decides the answer.
BODIES = {
    ("POST", "/api/v1/users"): {"email": "x@example.com", "name": "X"},
    ("POST", "/api/v1/users/me/tokens"): {"name": "t"},
    ("POST", "/api/v1/projects"): {"name": "p"},
    ("POST", "/api/v1/agents"): {"name": "a"},
    ("POST", "/api/v1/tasks"): {"project_id": 1, "title": "t"},
}


def _operations(app, prefix: str = "/api/v1"):
    for path, operations in app.openapi()["paths"].items():
        if path.startswith(prefix):
            for method, operation in operations.items():
                yield method.upper(), path, operation


@pytest.fixture(scope="module")
def app():
    return create_app(load_settings(database_url="sqlite:///unused.db"))


def test_every_api_operation_documents_401_and_503_with_their_headers(app):
    operations = list(_operations(app))
    assert len(operations) >= 20
    for method, path, operation in operations:
        responses = operation["responses"]
        assert "WWW-Authenticate" in responses["401"]["headers"], (method, path)
        assert responses["503"]["headers"]["Retry-After"]["required"] is True, (method, path)


def test_every_operation_with_a_body_documents_400_and_422(app):
    with_body = [(m, p, o) for m, p, o in _operations(app) if "requestBody" in o]
    assert len(with_body) == 9
    for method, path, operation in with_body:
        responses = operation["responses"]
        assert "not valid JSON" in responses["400"]["description"], (method, path)
        assert "422" in responses, (method, path)


def test_readiness_documents_its_503_and_the_reason_codes(app):
    answers = app.openapi()["paths"]["/health/ready"]["get"]["responses"]
    schemas = app.openapi()["components"]["schemas"]
    assert answers["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Readiness")
    assert answers["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/NotReady")
    assert set(schemas["NotReady"]["properties"]["reason"]["enum"]) == {
        "database_unreachable", "migrations_pending", "database_ahead", "database_unversioned",
        "migrations_unusable", "check_failed",
    }


def test_every_route_answers_503_as_documented_before_the_database_is_migrated(db_url):
    """Staging does not migrate at start-up: until `db upgrade`, every route is a 503."""
    settings = load_settings(environment="staging", database_url=db_url)
    with TestClient(create_app(settings)) as client:
        check_every_response(client)
        headers = {"Authorization": "Bearer orch_whatever"}
        answers = {}
        for method, path, _ in list(_operations(client.app)):
            url = re.sub(r"\{[^}]+\}", "1", path)
            response = client.request(method, url, json=BODIES.get((method, path), {}),
                                      headers=headers)
            answers[(method, path)] = (response.status_code, response.headers.get("retry-after"))
        health = client.get("/health", headers=headers)
    assert set(answers.values()) == {(503, "1")}, answers
    assert health.status_code == 503
    assert health.json()["detail"] == (
        "the database is not ready (its schema is not the one this code needs); see /health/ready"
    )


def test_an_answer_the_document_does_not_describe_is_caught(app, client):
    """The conformance check itself can fail: a 500, which no operation documents."""
    response = client.get("/health/live")
    response.status_code = 500
    with pytest.raises(BaseExceptionGroup) as caught:
        assert_conforms(client.app, response)
    assert "Undocumented status code" in str(caught.value.exceptions[0])
