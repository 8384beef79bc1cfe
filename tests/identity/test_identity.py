"""User keys on PostgreSQL and on the embedded SQLite default: the user comes from the key, and a
user key acts for that user alone (writes, bulk JSON and CSV, deletes, local scores)."""

import time
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlmodel import select

from app.models import ApiKey
from tests.comparisons.test_comparisons import WRITE, assert_problem, payload
from tests.conftest import ApiClient

URL = "/api/v1/comparisons"
READ_LOCAL = "scores:read_local"


def without_user(**scores: float) -> dict[str, object]:
    body = payload(**scores)
    del body["user_id"]
    return body


def stored_users(client: ApiClient) -> list[str]:
    items = client.get(URL, params={"limit": 1000}).json()["items"]
    return sorted({item["user_id"] for item in items})


def test_a_user_key_writes_as_its_user_and_only_as_its_user(client: ApiClient) -> None:
    alice = client.key(WRITE, user="alice")
    # Repeated, so that on SQLite (no dependency overrides) the later posts take the single-write
    # fast path with the key verified: both paths answer the same.
    for score in (1, 2, 3):
        omitted = client.post(URL, json=without_user(largely_recommended=score), headers=alice)
        assert omitted.status_code in (200, 201), omitted.text
        assert omitted.json()["user_id"] == "alice"
        named = client.post(URL, json=payload(largely_recommended=score), headers=alice)
        assert named.status_code == 200 and named.json()["user_id"] == "alice"
        other = client.post(URL, json=payload(user="bob"), headers=alice)
        assert "alice" in assert_problem(other, 403)["detail"]
    assert stored_users(client) == ["alice"]


def test_a_service_key_must_name_the_user(client: ApiClient) -> None:
    service = client.key(WRITE)
    body = assert_problem(client.post(URL, json=without_user(), headers=service), 422)
    assert [e["pointer"] for e in body["errors"]] == ["/user_id"]
    assert client.post(URL, json=payload(user="bob"), headers=service).status_code == 201
    assert client.post(URL, json=payload(user="carol"), headers=service).status_code == 201
    assert stored_users(client) == ["bob", "carol"]


def test_bulk_json_rows_are_the_user_keys_user(client: ApiClient) -> None:
    alice = client.key(WRITE, user="alice")
    rows = [without_user(), payload(a="yt:ccc", b="yt:ddd")]
    response = client.post(URL + "/bulk", json=rows, headers=alice)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == 2
    mixed = [without_user(a="yt:eee"), payload(user="bob", a="yt:fff"), payload(user="eve")]
    detail = assert_problem(client.post(URL + "/bulk", json=mixed, headers=alice), 403)["detail"]
    assert "rows naming another user: 1, 2" in detail
    assert stored_users(client) == ["alice"]
    assert client.get(URL).json()["total"] == 2
    # A service key's rows without a user are each reported.
    service = client.key(WRITE)
    body = assert_problem(
        client.post(URL + "/bulk", json=[payload(user="bob"), without_user()], headers=service),
        422,
    )
    assert [e["pointer"] for e in body["errors"]] == ["/1/user_id"]
    assert stored_users(client) == ["alice"]


def test_bulk_csv_rows_are_the_user_keys_user(client: ApiClient) -> None:
    alice = client.key(WRITE, user="alice")
    csv_headers = {**alice, "content-type": "text/csv"}
    no_column = "video_a,video_b,criteria,score\nyt:aaa,yt:bbb,largely_recommended,3\n"
    response = client.post(URL + "/bulk", content=no_column, headers=csv_headers)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == 1
    named = (
        "public_username,video_a,video_b,criteria,score\n"
        "alice,yt:aaa,yt:ccc,largely_recommended,1\n"
        ",yt:aaa,yt:ddd,largely_recommended,1\n"
    )
    assert client.post(URL + "/bulk", content=named, headers=csv_headers).json()["inserted"] == 2
    other = named + "bob,yt:aaa,yt:eee,largely_recommended,1\n"
    detail = assert_problem(client.post(URL + "/bulk", content=other, headers=csv_headers), 403)[
        "detail"
    ]
    assert "rows naming another user: 3" in detail
    assert stored_users(client) == ["alice"] and client.get(URL).json()["total"] == 3
    # A service key still needs the column.
    service_csv = {**client.key(WRITE), "content-type": "text/csv"}
    assert_problem(client.post(URL + "/bulk", content=no_column, headers=service_csv), 422)


def test_a_user_key_deletes_only_its_users_comparisons(client: ApiClient) -> None:
    service = client.key(WRITE)
    for user in ("alice", "bob"):
        assert client.post(URL, json=payload(user=user), headers=service).status_code == 201
    alice = client.key(WRITE, user="alice")
    assert_problem(client.delete(URL + "/bob/yt:aaa/yt:bbb", headers=alice), 403)
    assert client.delete(URL + "/alice/yt:aaa/yt:bbb", headers=alice).status_code == 204
    assert stored_users(client) == ["bob"]


def test_a_user_key_reads_only_its_users_local_scores(client: ApiClient) -> None:
    service = client.key(WRITE)
    for user in ("alice", "bob"):
        assert client.post(URL, json=payload(user=user), headers=service).status_code == 201
    alice = client.key(READ_LOCAL, user="alice")
    own = client.get("/api/v1/users/alice/scores", headers=alice)
    assert own.status_code == 200, own.text
    assert_problem(client.get("/api/v1/users/bob/scores", headers=alice), 403)
    assert_problem(client.get("/api/v1/users/nobody/scores", headers=alice), 403)
    # A service key reads anyone's.
    reader = client.key(READ_LOCAL)
    assert client.get("/api/v1/users/bob/scores", headers=reader).status_code == 200
    # The key's scopes still apply: a read key does not write.
    assert_problem(client.post(URL, json=without_user(), headers=alice), 403)


def test_admin_api_creates_lists_and_revokes_keys(client: ApiClient) -> None:
    admin = client.key("admin")
    assert_problem(client.get("/api/v1/api-keys", headers=client.key(WRITE)), 403)
    assert_problem(client.get("/api/v1/api-keys"), 401)
    created = client.post(
        "/api/v1/api-keys",
        json={
            "name": "frontend alice",
            "scopes": [WRITE, READ_LOCAL],
            "user_id": "alice",
            "expires_in": "30d",
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    made = created.json()
    assert made["key"].startswith(f"lk_{made['prefix']}_") and made["status"] == "active"
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    # A user key holds user scopes only; unknown scopes and past expiries are refused.
    for bad in (
        {"scopes": ["criteria:write"], "user_id": "alice"},
        {"scopes": ["nope"]},
        {"scopes": [WRITE], "expires_at": "2020-01-01T00:00:00Z"},
    ):
        assert_problem(client.post("/api/v1/api-keys", json=bad, headers=admin), 422)

    key = {"Authorization": f"Bearer {made['key']}"}
    assert client.post(URL, json=without_user(), headers=key).status_code == 201
    listing = client.get("/api/v1/api-keys", headers=admin).json()
    assert listing["total"] == 3  # admin, write, the new one
    shown = next(item for item in listing["items"] if item["prefix"] == made["prefix"])
    assert "key" not in shown
    assert shown["user_id"] == "alice" and shown["scopes"] == [WRITE, READ_LOCAL]
    assert shown["last_used_at"] is not None and shown["revoked_at"] is None

    revoked = client.post(f"/api/v1/api-keys/{made['prefix']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert_problem(client.post("/api/v1/api-keys/00000000/revoke", headers=admin), 404)
    from app.identity.security import forget_verified_keys

    forget_verified_keys()  # the cache window, elapsed (two processes: test_key_revocation.py)
    assert_problem(client.post(URL, json=without_user(largely_recommended=1), headers=key), 401)
    assert client.get(URL).json()["items"][0]["score"] == 6


def test_keys_that_could_not_be_stored_or_listed_safely_are_refused(client: ApiClient) -> None:
    """Expiries beyond ten years (near year 9999 they do not fit the database once in UTC) and
    names with control characters are 422s that store nothing; an expiry in another zone is
    stored and answered in UTC; a mistyped whole key is never echoed."""
    admin = client.key("admin")
    far = (datetime.now(UTC) + timedelta(days=3660)).isoformat()
    for bad, expected in [
        ({"expires_at": "9999-12-31T23:59:59-12:00"}, "ten years"),
        ({"expires_at": "9999-12-31T23:59:59Z"}, "ten years"),
        ({"expires_at": far}, "ten years"),
        ({"expires_in": "9999-12-31T23:59:59-12:00"}, "ten years"),
        ({"expires_in": "9" * 30 + "d"}, "ten years"),
        ({"expires_in": "4000w"}, "ten years"),
        ({"name": "x\u0000y"}, "/name"),
        ({"name": "bell\u0007"}, "/name"),
        ({"name": "ok\r\nfake line"}, "/name"),
        ({"name": "\u001b[31mred"}, "/name"),
    ]:
        body = {"scopes": [WRITE], **bad}
        problem = assert_problem(client.post("/api/v1/api-keys", json=body, headers=admin), 422)
        assert expected in str(problem), (bad, problem)
    listing = client.get("/api/v1/api-keys", headers=admin)
    assert listing.status_code == 200 and listing.json()["total"] == 1  # the admin key alone

    in_a_year = (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0)
    west = in_a_year.astimezone(timezone(timedelta(hours=-12)))
    created = client.post(
        "/api/v1/api-keys",
        json={"name": "west", "scopes": [WRITE], "expires_at": west.isoformat()},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert datetime.fromisoformat(created.json()["expires_at"]) == in_a_year
    assert created.json()["expires_at"].endswith(("Z", "+00:00"))

    mistyped = assert_problem(
        client.post("/api/v1/api-keys/lk_deadbeef_SECRETSECRET/revoke", headers=admin), 404
    )
    assert "SECRET" not in mistyped["detail"] and "lk_deadbeef_…" in mistyped["detail"]


def test_an_expired_key_is_refused(client: ApiClient) -> None:
    past = client.key(WRITE, user="alice", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    detail = assert_problem(client.post(URL, json=without_user(), headers=past), 401)["detail"]
    assert "Expired" in detail
    soon = client.key(WRITE, user="alice", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert client.post(URL, json=without_user(), headers=soon).status_code == 201


def test_last_used_is_written_at_most_once_a_minute(client: ApiClient) -> None:
    auth = client.key(WRITE, user="alice")
    from app.identity.security import forget_verified_keys

    def last_used() -> datetime | None:
        with client._session_factory() as session:  # type: ignore[operator]
            session.expire_all()
            row = session.exec(select(ApiKey).where(ApiKey.user_id == "alice")).one()
            return row.last_used_at

    assert last_used() is None
    assert client.post(URL, json=without_user(), headers=auth).status_code == 201
    first = last_used()
    assert first is not None
    # Verified again (the cache forgotten, as after its window), within the minute: no write.
    forget_verified_keys()
    assert client.post(URL, json=without_user(largely_recommended=2), headers=auth).status_code
    assert last_used() == first


def test_a_cached_key_is_dropped_at_its_expiry(
    client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verified-key cache never outlives the key: with a cache window far longer than the
    key's life, the entry still lapses at the expiry (a clock under the test's control)."""
    from app.identity import security

    clock = [1000.0]
    monkeypatch.setattr(
        security, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    )
    monkeypatch.setattr(security, "KEY_CACHE_SECONDS", 1e9)
    auth = client.key(WRITE, user="alice", expires_at=datetime.now(UTC) + timedelta(minutes=10))
    assert client.post(URL, json=without_user(), headers=auth).status_code == 201
    assert security.cached_principal(auth["Authorization"]) is not None
    clock[0] += 9 * 60
    assert security.cached_principal(auth["Authorization"]) is not None
    clock[0] += 61
    assert security.cached_principal(auth["Authorization"]) is None
