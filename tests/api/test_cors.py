"""CORS on the embedded default: real preflights from listed, unlisted and `*`-admitted origins,
and the headers every kind of answer (success, 401, 413, 422, 500 problems) carries."""

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import get_engine
from app.identity.security import create_api_key
from app.main import create_app
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import migrate, reset_caches

FRONTEND = "http://localhost:3000"
OTHER = "http://evil.example"
URL = "/api/v1/comparisons"

AppFactory = Callable[..., TestClient]


@pytest.fixture
def app_with(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppFactory]:
    """`app_with(NAME=value, ...)`: the API on a migrated embedded database with those settings."""
    clients: list[TestClient] = []

    def make(*, migrated: bool = True, **settings: str) -> TestClient:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        reset_caches()
        if migrated:
            get_settings().ensure_data_dir()
            migrate(get_settings().resolved_database_url)
        client = TestClient(create_app(), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def bearer(*scopes: str, user: str | None = None) -> dict[str, str]:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="browser", scopes=list(scopes), user_id=user)
        session.commit()
    return {"Authorization": f"Bearer {key}"}


def preflight(client: TestClient, path: str, origin: str, method: str, headers: str = "") -> object:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request_headers)


def vary(response: object) -> set[str]:
    return {part.strip().lower() for part in response.headers.get("vary", "").split(",")}  # type: ignore[attr-defined]


def test_off_by_default_a_preflight_is_not_answered(app_with: AppFactory) -> None:
    client = app_with()
    response = preflight(client, URL, FRONTEND, "POST", "authorization, content-type")
    assert response.status_code == 405  # type: ignore[attr-defined]
    assert "access-control-allow-origin" not in response.headers  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "path",
    [
        URL,  # the single-write fast path's route, POST only
        "/api/v1/comparisons/bulk",
        "/api/v1/scores",
        "/api/v1/comparisons/alice/yt:a/yt:b",
        "/api/v1/no-such-route",
        "/healthz",
    ],
)
def test_a_listed_origin_gets_its_preflight_approved_on_every_route(
    app_with: AppFactory, path: str
) -> None:
    client = app_with(CORS_ALLOW_ORIGINS=f"{FRONTEND}, http://localhost:5173")
    response = preflight(client, path, FRONTEND, "POST", "Authorization, Content-Type")
    assert response.status_code == 204, response.text  # type: ignore[attr-defined]
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["access-control-allow-origin"] == FRONTEND
    assert headers["access-control-allow-credentials"] == "true"
    assert "POST" in headers["access-control-allow-methods"]
    assert "DELETE" in headers["access-control-allow-methods"]
    assert set(headers["access-control-allow-headers"].split(", ")) == {
        "authorization",
        "content-type",
    }
    assert int(headers["access-control-max-age"]) > 0
    assert "origin" in vary(response)


def test_an_unlisted_origin_gets_its_preflight_refused(app_with: AppFactory) -> None:
    client = app_with(CORS_ALLOW_ORIGINS=FRONTEND)
    response = preflight(client, URL, OTHER, "POST", "authorization, content-type")
    body = assert_problem(response, 403)
    assert OTHER in body["detail"]
    assert "access-control-allow-origin" not in response.headers  # type: ignore[attr-defined]
    assert "origin" in vary(response)
    # And its requests get no CORS headers: the browser hides the answer from the page.
    read = client.get("/api/v1/scores", headers={"Origin": OTHER})
    assert read.status_code == 200
    assert "access-control-allow-origin" not in read.headers


def test_a_wildcard_admits_anonymous_reads_from_any_origin_and_nothing_more(
    app_with: AppFactory,
) -> None:
    client = app_with(CORS_ALLOW_ORIGINS=f"*,{FRONTEND}")
    # A GET with a non-safelisted header but no credential: approved for any origin.
    anonymous = preflight(client, "/api/v1/scores", OTHER, "GET", "if-none-match")
    assert anonymous.status_code == 204  # type: ignore[attr-defined]
    assert anonymous.headers["access-control-allow-origin"] == "*"  # type: ignore[attr-defined]
    assert "access-control-allow-credentials" not in anonymous.headers  # type: ignore[attr-defined]
    assert "POST" not in anonymous.headers["access-control-allow-methods"]  # type: ignore[attr-defined]
    # A credential, or a write, needs the origin listed.
    assert_problem(preflight(client, "/api/v1/scores", OTHER, "GET", "authorization"), 403)
    assert_problem(preflight(client, URL, OTHER, "POST", "content-type"), 403)
    assert_problem(preflight(client, URL, OTHER, "DELETE"), 403)
    # The listed origin still may do everything, answered with its own name (never `*`).
    listed = preflight(client, "/api/v1/scores", FRONTEND, "GET", "authorization")
    assert listed.headers["access-control-allow-origin"] == FRONTEND  # type: ignore[attr-defined]
    assert listed.headers["access-control-allow-credentials"] == "true"  # type: ignore[attr-defined]

    read = client.get("/api/v1/scores", headers={"Origin": OTHER})
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in read.headers
    assert "etag" in read.headers["access-control-expose-headers"].lower()
    assert "origin" in vary(read)
    # A HEAD is the GET without its body: as readable, with the same headers.
    head = client.head("/api/v1/scores", headers={"Origin": OTHER})
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["access-control-allow-origin"] == "*"
    assert head.headers["content-length"] == read.headers["content-length"]
    # A request with a credential from an unlisted origin (no browser would send it after the
    # refused preflight) is not marked readable either, nor is a write.
    with_key = client.get(
        "/api/v1/scores", headers={"Origin": OTHER, "Authorization": "Bearer lk_x_y"}
    )
    assert "access-control-allow-origin" not in with_key.headers
    write = client.post(URL, json=payload(), headers={"Origin": OTHER})
    assert "access-control-allow-origin" not in write.headers


def test_answers_to_a_listed_origin_are_readable_problems_included(
    app_with: AppFactory,
) -> None:
    client = app_with(CORS_ALLOW_ORIGINS=FRONTEND, MAX_BODY_BYTES="2048")
    origin = {"Origin": FRONTEND}
    auth = bearer("comparisons:write")

    def readable(response: object) -> None:
        headers = response.headers  # type: ignore[attr-defined]
        assert headers["access-control-allow-origin"] == FRONTEND
        assert headers["access-control-allow-credentials"] == "true"
        exposed = {
            name.strip().lower() for name in headers["access-control-expose-headers"].split(",")
        }
        assert {"location", "etag", "retry-after"} <= exposed
        assert "origin" in vary(response)

    # Through the route (the key is looked up), then the fast path (the key is cached).
    for _ in range(2):
        created = client.post(URL, json=payload(), headers={**origin, **auth})
        assert created.status_code in (200, 201), created.text
        readable(created)
    unauthenticated = client.post(URL, json=payload(), headers=origin)
    assert_problem(unauthenticated, 401)
    readable(unauthenticated)
    invalid = client.post(URL, json={"user_id": "alice"}, headers={**origin, **auth})
    assert_problem(invalid, 422)
    readable(invalid)
    too_large = client.post(
        URL,
        content=b"[" + b" " * 4096 + b"]",
        headers={**origin, **auth, "Content-Type": "application/json"},
    )
    assert_problem(too_large, 413)
    readable(too_large)
    readable(client.get("/api/v1/scores", headers=origin))


def test_a_server_error_is_readable_too(app_with: AppFactory) -> None:
    # No tables: the handler raises, and the server-error middleware answers the 500.
    client = app_with(migrated=False, CORS_ALLOW_ORIGINS=FRONTEND)
    response = client.get("/api/v1/videos", headers={"Origin": FRONTEND})
    assert_problem(response, 500)
    assert response.headers["access-control-allow-origin"] == FRONTEND


def test_origins_setting_takes_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", " http://a.example/ , https://b.example,")
    reset_caches()
    assert get_settings().cors_allow_origins == ["http://a.example", "https://b.example"]


def test_an_entry_that_is_no_origin_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from app.core.config import Settings

    with monkeypatch.context() as patched, pytest.raises(ValidationError, match="localhost:3000"):
        patched.setenv("CORS_ALLOW_ORIGINS", "https://ok.example,localhost:3000")
        Settings()
