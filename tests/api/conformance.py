"""Checks a response against the app's own OpenAPI document, with schemathesis' response checks:
the status is documented for the operation, and so are its content type, headers and body."""

from __future__ import annotations

import re
import weakref

import schemathesis
from fastapi import FastAPI
from schemathesis.specs.openapi import checks

RESPONSE_CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


# Per app, without keeping the apps of finished tests alive.
_schemas: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _schema(app: FastAPI):
    if app not in _schemas:
        _schemas[app] = schemathesis.openapi.from_dict(app.openapi())
    return _schemas[app]


def case_for(app: FastAPI, method: str, path: str):
    """A schemathesis case for the operation a request to `path` reaches (a literal segment
    beats a parameter), with the path's parameters; None for a path the API does not have."""
    matches = []
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\{([^}]+)\}", r"(?P<\1>[^/]+)", template)
        if method.lower() in operations and (found := re.fullmatch(pattern, path)):
            matches.append((template.count("{"), template, found.groupdict()))
    if not matches:
        return None
    _, template, parameters = min(matches)
    return _schema(app)[template][method.upper()].Case(path_parameters=parameters)


def assert_conforms(app: FastAPI, response) -> None:
    """Fail unless the OpenAPI document describes `response` (status, type, headers, body)."""
    request = response.request
    case = case_for(app, request.method, request.url.path)
    assert case is not None, f"{request.method} {request.url.path} is not in the OpenAPI document"
    case.validate_response(response, checks=RESPONSE_CHECKS)


def check_every_response(client) -> None:
    """Make `client` (a TestClient) check each response of an operation the API documents:
    every test that uses it then also tests the OpenAPI document against real answers."""

    def check(response) -> None:
        request = response.request
        if case_for(client.app, request.method, request.url.path) is not None:
            response.read()
            assert_conforms(client.app, response)

    client.event_hooks = {"request": [], "response": [check]}
