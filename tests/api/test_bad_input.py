"""No input gets a 500: whatever a client sends to a route that takes a body, the answer is a
4xx (or a 2xx, when it happens to be valid) with a JSON body the OpenAPI document describes.

JSON may carry what a JSON reply cannot (NaN, Infinity, 1e400, lone UTF-16 surrogates) and
what Python's parser refuses (numbers of thousands of digits, nesting thousands deep), and a
body need not be JSON or UTF-8 at all.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conformance import assert_conforms

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def routes(client, alice) -> list[tuple[str, str, dict]]:
    """(method, path, a valid body) for every route that takes a body."""
    headers = alice.headers
    project = client.post("/api/v1/projects", json={"name": "p"}, headers=headers).json()
    agent = client.post("/api/v1/agents", json={"name": "a"}, headers=headers).json()
    task = client.post("/api/v1/tasks", json={"project_id": project["id"], "title": "t"},
                       headers=headers).json()
    return [
        ("POST", "/api/v1/users", {"email": "new@example.com", "name": "New"}),
        ("PATCH", f"/api/v1/users/{alice.id}", {"name": "Alice"}),
        ("POST", "/api/v1/users/me/tokens", {"name": "ci"}),
        ("POST", "/api/v1/projects", {"name": "p2"}),
        ("PATCH", f"/api/v1/projects/{project['id']}", {"description": "d"}),
        ("POST", "/api/v1/agents", {"name": "b"}),
        ("PATCH", f"/api/v1/agents/{agent['id']}", {"status": "busy"}),
        ("POST", "/api/v1/tasks", {"project_id": project["id"], "title": "t2",
                                   "priority_level": 2}),
        ("PATCH", f"/api/v1/tasks/{task['id']}", {"priority_level": 4}),
    ]


def _send(client, user, method: str, path: str, content: bytes, headers=JSON):
    return client.request(method, path, content=content, headers={**user.headers, **headers})


def _assert_refused_with_json(client, response, status: int | None = None) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text[:300]
    body = response.json()
    assert "detail" in body
    assert_conforms(client.app, response)
    return body


def _with(valid: dict, text: str) -> bytes:
    """The valid body with every field's value replaced by the JSON text `text`."""
    return ("{" + ", ".join(f'"{name}": {text}' for name in valid) + "}").encode()


# Each is parsed by Python's json module; a JSON reply cannot carry the value back as it came.
NON_FINITE_OR_HUGE = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" + "0" * 4000,
                      '"\\ud800"', '{"\\udfff": NaN}', "[" * 500 + "1e400" + "]" * 500]


def test_numbers_and_text_json_cannot_echo_are_422(client, alice, routes):
    for value in NON_FINITE_OR_HUGE:
        for method, path, valid in routes:
            response = _send(client, alice, method, path, _with(valid, value))
            body = _assert_refused_with_json(client, response, 422)
            json.dumps(body, allow_nan=False)  # the reply is strict JSON


def test_priority_level_1e400_and_nan_are_422_naming_the_field(client, alice, routes):
    method, path, valid = routes[7]
    for value in ("1e400", "NaN"):
        content = json.dumps(valid).replace('"priority_level": 2', f'"priority_level": {value}')
        body = _assert_refused_with_json(client, _send(client, alice, method, path,
                                                       content.encode()), 422)
        assert body["detail"][0]["loc"] == ["body", "priority_level"]


NOT_JSON = [
    (b'{"name": 1' + b"0" * 5000 + b"}", "a number in it has too many digits"),
    (b"[" * 100_000 + b"]" * 100_000, "it is nested too deeply"),
    (b'{"name": "' + b"\xff\xfe" + b'"}', "it is not UTF-8 text"),
    (b'{"name": "x"', "Expecting ',' delimiter at position 12"),
    (b"{'name': 'x'}", "Expecting property name enclosed in double quotes at position 1"),
]


def test_a_body_that_is_not_json_is_400_saying_why(client, alice, routes):
    for content, reason in NOT_JSON:
        for method, path, _ in routes:
            response = _send(client, alice, method, path, content)
            detail = _assert_refused_with_json(client, response, 400)["detail"]
            assert detail.startswith("the body is not valid JSON: ") and reason in detail, detail


def test_a_body_that_is_not_an_object_is_4xx(client, alice, routes):
    for content in (b"", b"null", b"[]", b'"text"', b"1e400", b"NaN"):
        for method, path, _ in routes:
            _assert_refused_with_json(client, _send(client, alice, method, path, content))


def test_a_long_bad_value_is_echoed_only_in_part(client, alice, routes):
    method, path, valid = routes[7]
    response = _send(client, alice, method, path,
                     json.dumps({**valid, "title": "x" * 100_000}).encode())
    echoed = _assert_refused_with_json(client, response, 422)["detail"][0]["input"]
    assert echoed.startswith("xxx") and len(echoed) < 1_000


# -- generated input ----------------------------------------------------------------------

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**600), max_value=10**600),
    st.sampled_from([2**31, 2**63, -(2**31) - 1, 0, 1, 5, 6]),
    # Every code point, lone surrogates and NUL included.
    st.text(st.characters(codec=None, exclude_categories=()), max_size=30),
)
_values = st.recursive(_leaves, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.text(st.characters(exclude_categories=()), max_size=8), children,
                    max_size=4),
), max_leaves=12)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_bodies_never_get_a_server_error(client, alice, routes, data):
    method, path, valid = data.draw(st.sampled_from(routes))
    shape = data.draw(st.sampled_from(["field", "extra", "whole", "bytes", "deep"]))
    if shape == "bytes":
        content = data.draw(st.binary(max_size=64))
    elif shape == "deep":
        depth = data.draw(st.integers(min_value=1, max_value=50_000))
        opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        content = (opener * depth + "1" + closer * depth).encode()
    else:
        value = data.draw(_values)
        if shape == "field":
            body = {**valid, data.draw(st.sampled_from(sorted(valid))): value}
        elif shape == "extra":
            body = {**valid, data.draw(st.text(max_size=8)): value}
        else:
            body = value
        # What a client in another language may send: NaN/Infinity tokens, \\ud800 escapes.
        content = json.dumps(body, allow_nan=True).encode()
    response = _send(client, alice, method, path, content)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 204:
        json.loads(response.content)  # strict enough: Python's parser, as most clients
    assert_conforms(client.app, response)
