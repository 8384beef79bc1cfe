"""Rate limits on writes and expensive requests: in process memory on the embedded default, in
Redis shared by two application instances when Redis is the broker; the single-write fast path
counts like the route."""

import logging
from dataclasses import dataclass
from typing import cast

import pytest
from sqlalchemy import text
from starlette.requests import Request

from app.api.rate_limits import categories, rate_limit_keys
from app.comparisons import routes as comparisons
from app.core.db import get_engine
from app.identity.security import Principal
from app.scores import routes as scores
from app.sweeps import routes as sweeps
from tests.api.test_cors import AppFactory, app_with, bearer
from tests.browser_support import IdentityProvider
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.helpers import free_port

__all__ = ["app_with"]  # the fixture, shared with the CORS tests

URL = "/api/v1/comparisons"


def stored_comparisons() -> int:
    with get_engine().connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM comparisons")).scalar_one())


def assert_limited(response: object) -> dict[str, object]:
    body = assert_problem(response, 429)
    headers = response.headers  # type: ignore[attr-defined]
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["ratelimit-remaining"] == "0"
    assert int(headers["ratelimit-limit"]) > 0
    return body


def test_writes_are_limited_per_credential_route_and_fast_path_alike(
    app_with: AppFactory,
) -> None:
    client = app_with(
        RATE_LIMIT_ENABLED="true", RATE_LIMIT_WRITES="3/minute", AUTO_TRAIN_ENABLED="false"
    )
    auth = bearer("comparisons:write")
    # The first write looks the key up (the route), the next two find it cached (the fast path).
    for video in ("yt:b1", "yt:b2", "yt:b3"):
        assert client.post(URL, json=payload(b=video), headers=auth).status_code == 201
    body = assert_limited(client.post(URL, json=payload(b="yt:b4"), headers=auth))
    assert "writes" in body["detail"]
    # Other writes by the same credential share the budget: a delete and a bulk write.
    assert_limited(client.delete(f"{URL}/alice/yt:aaa/yt:b1", headers=auth))
    assert_limited(client.post(f"{URL}/bulk", json=[payload(b="yt:b5")], headers=auth))
    assert stored_comparisons() == 3
    # Another credential has its own budget; reads are not limited.
    assert (
        client.post(URL, json=payload(b="yt:b6"), headers=bearer("comparisons:write")).status_code
        == 201
    )
    assert client.get("/api/v1/scores").status_code == 200
    assert client.get(URL, headers=auth).status_code == 200


def test_a_users_credentials_share_the_users_budget(app_with: AppFactory) -> None:
    idp = IdentityProvider()
    client = app_with(
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_WRITES="3/minute",
        AUTO_TRAIN_ENABLED="false",
        **idp.settings(),
    )
    user_key = bearer("comparisons:write", user="alice")
    token = {"Authorization": f"Bearer {idp.token('alice')}"}
    for auth, video in ((user_key, "yt:b1"), (token, "yt:b2"), (user_key, "yt:b3")):
        assert client.post(URL, json=payload(b=video), headers=auth).status_code == 201
    # Each credential has writes left, but alice has not.
    assert_limited(client.post(URL, json=payload(b="yt:b4"), headers=token))
    assert_limited(client.post(URL, json=payload(b="yt:b4"), headers=user_key))
    bob = {"Authorization": f"Bearer {idp.token('bob')}"}
    assert client.post(URL, json=payload(user="bob", b="yt:b4"), headers=bob).status_code == 201
    assert stored_comparisons() == 4


def test_the_fast_path_alone_enforces_the_limit(app_with: AppFactory) -> None:
    client = app_with(
        RATE_LIMIT_ENABLED="true", RATE_LIMIT_WRITES="2/minute", AUTO_TRAIN_ENABLED="false"
    )
    auth = bearer("comparisons:write")
    # Warm the key cache through a route that is not limited, so every write below takes the
    # fast path (a cached key, the scope, a JSON body).
    assert client.get(f"{URL}/bulk", headers=auth).status_code == 405
    client.post(URL, json=payload(b="yt:b1"), headers=auth)
    assert client.app.state.rate_limits is not None  # type: ignore[attr-defined]
    assert client.post(URL, json=payload(b="yt:b2"), headers=auth).status_code == 201
    assert_limited(client.post(URL, json=payload(b="yt:b3"), headers=auth))
    assert stored_comparisons() == 2


def test_expensive_requests_are_limited_per_credential_and_per_address(
    app_with: AppFactory,
) -> None:
    client = app_with(
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_EXPENSIVE="3/minute",
        RATE_LIMIT_ANONYMOUS_EXPENSIVE="2/minute",
    )
    export = "/api/v1/sweeps/1/trials.csv"
    # Without a credential: counted per client address (the 404s cost a lookup too).
    for _ in range(2):
        assert client.get(export).status_code == 404
    assert "expensive" in assert_limited(client.get(export))["detail"]
    # An unknown credential does not escape the address's count.
    assert_limited(client.get(export, headers={"Authorization": "Bearer lk_nope_nope"}))
    # A credential has its own, larger budget, which bulk writes share.
    auth = bearer("comparisons:write", "sweeps:write")
    assert client.get(export, headers=auth).status_code == 404
    assert client.get("/api/v1/sweeps/1/plots/loss-curves.png", headers=auth).status_code == 404
    bulk = client.post(f"{URL}/bulk", json=[payload()], headers=auth)
    assert bulk.status_code == 200 and bulk.json()["inserted"] == 1, bulk.text
    assert_limited(client.post(f"{URL}/bulk", json=[payload(b="yt:b2")], headers=auth))
    assert_limited(client.get(export, headers=auth))
    assert stored_comparisons() == 1
    # Cheap reads stay open.
    assert client.get("/api/v1/sweeps").status_code == 200


def test_off_by_default(app_with: AppFactory) -> None:
    client = app_with(RATE_LIMIT_WRITES="1/minute", RATE_LIMIT_ANONYMOUS_EXPENSIVE="1/minute")
    auth = bearer("comparisons:write")
    for video in ("yt:b1", "yt:b2", "yt:b3"):
        assert client.post(URL, json=payload(b=video), headers=auth).status_code == 201
    for _ in range(3):
        assert client.get("/api/v1/sweeps/1/trials.csv").status_code == 404


@pytest.mark.redis
def test_api_processes_sharing_the_broker_redis_share_the_counts(
    app_with: AppFactory, redis_broker_url: str
) -> None:
    settings = {
        "CELERY_BROKER_URL": redis_broker_url,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_WRITES": "4/minute",
        "AUTO_TRAIN_ENABLED": "false",
    }
    first = app_with(**settings)
    second = app_with(migrated=False, **settings)
    assert first.app is not second.app
    auth = bearer("comparisons:write")
    answers = [
        client.post(URL, json=payload(b=f"yt:b{index}"), headers=auth).status_code
        for index, client in enumerate([first, second, first, second])
    ]
    assert answers == [201, 201, 201, 201]
    assert_limited(second.post(URL, json=payload(b="yt:b9"), headers=auth))
    assert_limited(first.post(URL, json=payload(b="yt:b9"), headers=auth))
    assert stored_comparisons() == 4


def test_an_unreachable_counter_store_lets_requests_through_and_says_so(
    app_with: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = app_with(
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_WRITES="1/minute",
        RATE_LIMIT_STORAGE_URL=f"redis://127.0.0.1:{free_port()}/0",
        AUTO_TRAIN_ENABLED="false",
    )
    auth = bearer("comparisons:write")
    with caplog.at_level(logging.WARNING, logger="app.api.rate_limits"):
        for video in ("yt:b1", "yt:b2"):
            assert client.post(URL, json=payload(b=video), headers=auth).status_code == 201
    assert any("rate limits not applied" in record.message for record in caplog.records)


@dataclass(frozen=True)
class KeyPrincipal:
    """A principal that knows only its API key's id."""

    key_id: int


@dataclass(frozen=True)
class UserPrincipal:
    """A principal naming its credential and the user it is bound to (a user key, a token)."""

    credential: str
    user_id: str | None


def as_principal(shape: object) -> Principal:
    return cast(Principal, shape)  # rate_limit_keys reads the attributes it finds


def test_keys_name_the_credential_and_the_user_or_the_address() -> None:
    request = Request({"type": "http", "client": ("203.0.113.7", 5000), "headers": []})
    assert rate_limit_keys(as_principal(KeyPrincipal(7)), request) == ["credential:key:7"]
    service = UserPrincipal(credential="key:8", user_id=None)
    assert rate_limit_keys(as_principal(service), request) == ["credential:key:8"]
    token = UserPrincipal(credential="jwt:idp:alice", user_id="alice")
    assert rate_limit_keys(as_principal(token), request) == [
        "credential:jwt:idp:alice",
        "user:alice",
    ]
    assert rate_limit_keys(None, request) == ["address:203.0.113.7"]


def test_categories_of_routes() -> None:
    assert categories("POST", comparisons.create_comparison) == ("writes",)
    assert categories("POST", comparisons.create_comparisons_bulk) == ("writes", "expensive")
    assert categories("GET", sweeps.export_trials) == ("expensive",)
    assert categories("GET", scores.list_scores) == ()


@pytest.mark.parametrize(
    "name", ["RATE_LIMIT_WRITES", "RATE_LIMIT_EXPENSIVE", "RATE_LIMIT_ANONYMOUS_EXPENSIVE"]
)
def test_a_malformed_limit_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from pydantic import ValidationError

    from app.core.config import Settings

    with monkeypatch.context() as patched, pytest.raises(ValidationError, match="not a rate limit"):
        # Undone before the test's teardown reads the settings again.
        patched.setenv(name, "lots")
        Settings()
