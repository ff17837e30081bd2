"""Checks a response against the app's own OpenAPI document, with schemathesis' response checks:
the status is documented for the operation, and so are its content type, headers and body."""

from __future__ import annotations

import re
from functools import cache

import schemathesis
from fastapi import FastAPI
from schemathesis.specs.openapi import checks

RESPONSE_CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@cache
def _schema(app: FastAPI):
    return schemathesis.openapi.from_dict(app.openapi())


def case_for(app: FastAPI, method: str, path: str):
    """A schemathesis case for the operation a request to `path` reaches (a literal segment
    beats a parameter), with the path's parameters."""
    matches = []
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\{([^}]+)\}", r"(?P<\1>[^/]+)", template)
        if method.lower() in operations and (found := re.fullmatch(pattern, path)):
            matches.append((template.count("{"), template, found.groupdict()))
    assert matches, f"{method} {path} is not in the OpenAPI document"
    _, template, parameters = min(matches)
    return _schema(app)[template][method.upper()].Case(path_parameters=parameters)


def assert_conforms(app: FastAPI, response) -> None:
    """Fail unless the OpenAPI document describes `response` (status, type, headers, body)."""
    request = response.request
    case_for(app, request.method, request.url.path).validate_response(
        response, checks=RESPONSE_CHECKS
    )
