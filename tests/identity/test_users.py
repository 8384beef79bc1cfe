"""The users admin API on PostgreSQL and on the embedded SQLite default: trust, untrust, list."""

from tests.comparisons.test_comparisons import WRITE, assert_problem, payload
from tests.conftest import ApiClient

URL = "/api/v1/users"


def test_trust_untrust_and_list(client: ApiClient) -> None:
    admin = client.key("admin")
    writer = client.key(WRITE)
    for user in ("alice", "bob"):
        created = client.post("/api/v1/comparisons", json=payload(user=user), headers=writer)
        assert created.status_code == 201, created.text

    listed = client.get(URL, headers=admin).json()
    assert [(u["user_id"], u["trusted"]) for u in listed["items"]] == [
        ("alice", False),
        ("bob", False),
    ]
    assert listed["items"][0]["trust_changed_at"] is None

    trusted = client.put(f"{URL}/alice/trust", headers=admin)
    assert trusted.status_code == 200, trusted.text
    assert trusted.json()["user_id"] == "alice" and trusted.json()["trusted"] is True
    assert trusted.json()["trust_changed_at"].endswith(("Z", "+00:00"))
    # Again changes nothing; a user no comparison named yet is created, trusted.
    assert client.put(f"{URL}/alice/trust", headers=admin).json()["trusted"] is True
    assert client.put(f"{URL}/carol/trust", headers=admin).json()["trusted"] is True

    only_trusted = client.get(URL, params={"trusted": "true"}, headers=admin).json()
    assert [u["user_id"] for u in only_trusted["items"]] == ["alice", "carol"]
    assert only_trusted["total"] == 2
    untrusted = client.get(URL, params={"trusted": "false"}, headers=admin).json()
    assert [u["user_id"] for u in untrusted["items"]] == ["bob"]

    removed = client.delete(f"{URL}/alice/trust", headers=admin)
    assert removed.status_code == 200 and removed.json()["trusted"] is False
    assert client.delete(f"{URL}/alice/trust", headers=admin).json()["trusted"] is False
    only_trusted = client.get(URL, params={"trusted": True, "limit": 1}, headers=admin).json()
    assert [u["user_id"] for u in only_trusted["items"]] == ["carol"]


def test_unknown_user_and_bad_ids_are_problems(client: ApiClient) -> None:
    admin = client.key("admin")
    body = assert_problem(client.delete(f"{URL}/nobody/trust", headers=admin), 404)
    assert "nobody" in body["detail"]
    for bad in ("a%20b", "x" * 151, "%C3%A9%E2%80%8D"):
        assert_problem(client.put(f"{URL}/{bad}/trust", headers=admin), 422)
    assert_problem(client.get(URL, params={"trusted": "maybe"}, headers=admin), 422)
    assert_problem(client.get(URL, params={"limit": 0}, headers=admin), 422)


def test_only_admins_mark_users(client: ApiClient) -> None:
    writer = client.key(WRITE)
    user_key = client.key(WRITE, user="alice")
    for headers in (writer, user_key):
        assert_problem(client.put(f"{URL}/alice/trust", headers=headers), 403)
        assert_problem(client.delete(f"{URL}/alice/trust", headers=headers), 403)
        assert_problem(client.get(URL, headers=headers), 403)
    assert_problem(client.put(f"{URL}/alice/trust"), 401)


def test_the_openapi_document_bounds_the_routes(client: ApiClient) -> None:
    document = client.get("/api/v1/openapi.json").json()
    put = document["paths"]["/api/v1/users/{user_id}/trust"]["put"]
    (user_id,) = [p for p in put["parameters"] if p["name"] == "user_id"]
    assert user_id["schema"]["maxLength"] == 150 and "pattern" in user_id["schema"]
    assert {"401", "403", "422"} <= set(put["responses"])
    delete = document["paths"]["/api/v1/users/{user_id}/trust"]["delete"]
    assert "404" in delete["responses"]
    listing = document["paths"]["/api/v1/users"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1
