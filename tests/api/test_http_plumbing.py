"""HTTP plumbing on both backends: HEAD answered as GET without a body, request bodies of another
media type refused with a 415, and a body that is not JSON answered with one 422 on every JSON
route (a UTF-8 byte order mark skipped everywhere)."""

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute

from app.api.json_route import JsonBodyRoute
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import ApiClient

ADMIN = "admin"
BOM = b"\xef\xbb\xbf"

READ_PATHS = [
    "/healthz",
    "/api/v1/scores",
    "/api/v1/videos",
    "/api/v1/criteria",
    "/api/v1/comparisons",
    "/api/v1/openapi.json",
]


@pytest.mark.parametrize("path", READ_PATHS)
def test_head_answers_what_get_answers_without_the_body(client: ApiClient, path: str) -> None:
    got = client.get(path)
    head = client.head(path)
    assert (head.status_code, got.status_code) == (200, 200), head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


def test_head_is_authenticated_as_get_is(client: ApiClient) -> None:
    refused = client.head("/api/v1/api-keys")
    assert refused.status_code == client.get("/api/v1/api-keys").status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.content == b""
    assert client.head("/api/v1/api-keys", headers=client.key(ADMIN)).status_code == 200


def test_head_on_a_path_without_get_stays_a_405(client: ApiClient) -> None:
    response = client.head("/api/v1/comparisons/bulk")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.content == b""


def test_the_openapi_document_has_no_head_operations(client: ApiClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert not [path for path, operations in paths.items() if "head" in operations]


# (method, path, a valid body) of routes whose body FastAPI validates as a model.
JSON_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v1/comparisons", payload()),
    ("POST", "/api/v1/criteria", {"name": "clarity"}),
    ("POST", "/api/v1/training-runs", {}),
    ("POST", "/api/v1/api-keys", {"scopes": ["comparisons:write"]}),
    ("PATCH", "/api/v1/sweeps/1", {"max_trials": 3}),
    ("POST", "/api/v1/sweeps/1/promote", {}),
]
OTHER_MEDIA_TYPES = ["application/x-www-form-urlencoded", "text/plain", "application/xml", None]


@pytest.mark.parametrize(("method", "path", "body"), JSON_ROUTES)
@pytest.mark.parametrize("content_type", OTHER_MEDIA_TYPES)
def test_a_json_body_of_another_media_type_is_a_415(
    client: ApiClient, method: str, path: str, body: dict[str, Any], content_type: str | None
) -> None:
    headers = client.key(ADMIN)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.request(method, path, content=json.dumps(body).encode(), headers=headers)
    problem = assert_problem(response, 415)
    assert "Send application/json, not" in problem["detail"]
    assert (repr(content_type) if content_type else "without a Content-Type") in problem["detail"]


def test_the_key_is_checked_before_the_media_type(client: ApiClient) -> None:
    response = client.post(
        "/api/v1/api-keys", content=b"scopes=admin", headers={"Content-Type": "text/plain"}
    )
    assert_problem(response, 401)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"]
)
def test_json_media_types_with_parameters_or_suffixes_are_taken(
    client: ApiClient, content_type: str
) -> None:
    response = client.post(
        "/api/v1/criteria",
        content=b'{"name": "clarity"}',
        headers={**client.key(ADMIN), "Content-Type": content_type},
    )
    assert response.status_code == 201, response.text


def test_an_empty_body_is_left_to_the_model(client: ApiClient) -> None:
    response = client.post(
        "/api/v1/criteria", headers={**client.key(ADMIN), "Content-Type": "text/plain"}
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["type"] == "missing"


def test_a_route_without_a_body_ignores_the_media_type(client: ApiClient) -> None:
    auth = client.key(ADMIN)
    response = client.put(
        "/api/v1/users/alice/trust", content=b"x", headers={**auth, "Content-Type": "text/plain"}
    )
    assert response.status_code == 200, response.text


def test_every_route_with_a_model_body_checks_its_media_type(client: ApiClient) -> None:
    """A router added without the route class would answer form bodies with a 422 again."""
    unchecked = [
        route.path
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute)
        and route.body_field is not None
        and not isinstance(route, JsonBodyRoute)
    ]
    assert unchecked == []


def test_the_openapi_document_gives_the_415_and_no_400(client: ApiClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path, method in (("/api/v1/criteria", "post"), ("/api/v1/api-keys", "post")):
        responses = paths[path][method]["responses"]
        assert "415" in responses and "400" not in responses, (path, sorted(responses))
    assert "415" not in paths["/api/v1/criteria"]["get"]["responses"]


NOT_JSON = {
    "truncated": b"{",
    "invalid utf-8 in a string": b'{"name": "\xff"}',
    "100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "utf-16": '{"name": "clarity"}'.encode("utf-16"),
    # JSON's grammar allows it; both parsers refuse numbers past ~4,300 digits (CPU bound).
    "5,000-digit integer": b'{"name": ' + b"1" * 5000 + b"}",
}


@pytest.mark.parametrize(("method", "path", "_body"), JSON_ROUTES)
@pytest.mark.parametrize("case", sorted(NOT_JSON))
def test_a_body_that_is_not_json_is_the_bulk_routes_422(
    client: ApiClient, method: str, path: str, _body: dict[str, Any], case: str
) -> None:
    response = client.request(
        method,
        path,
        content=NOT_JSON[case],
        headers={**client.key(ADMIN), "Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422)
    assert problem["detail"].startswith("Body is not valid JSON: "), problem
    assert [error["pointer"] for error in problem["errors"]] == ["/"]
    bulk = client.post(
        "/api/v1/comparisons/bulk",
        content=NOT_JSON[case],
        headers={**client.key(ADMIN), "Content-Type": "application/json"},
    )
    assert (bulk.status_code, bulk.json()["detail"]) == (422, problem["detail"])


def test_a_byte_order_mark_is_skipped_on_every_json_route(client: ApiClient) -> None:
    auth = {**client.key(ADMIN), "Content-Type": "application/json"}
    single = client.post(
        "/api/v1/comparisons", content=BOM + json.dumps(payload()).encode(), headers=auth
    )
    assert single.status_code == 201, single.text
    bulk = client.post(
        "/api/v1/comparisons/bulk",
        content=BOM + json.dumps([payload(a="yt:ccc")]).encode(),
        headers=auth,
    )
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["inserted"] == 1
    criterion = client.post("/api/v1/criteria", content=BOM + b'{"name": "clarity"}', headers=auth)
    assert criterion.status_code == 201, criterion.text
