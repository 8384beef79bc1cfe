"""GET /api/v1/me: the calling credential's user and scopes, for a frontend to show."""

from tests.conftest import ApiClient


def test_me_says_who_the_credential_acts_for(client: ApiClient) -> None:
    assert client.get("/api/v1/me").status_code == 401
    refused = client.get("/api/v1/me", headers={"Authorization": "Bearer lk_nope_nope"})
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")

    user = client.get("/api/v1/me", headers=client.key("comparisons:write", user="alice"))
    assert user.status_code == 200
    assert user.json() == {"user_id": "alice", "scopes": ["comparisons:write"], "kind": "user key"}

    service = client.get("/api/v1/me", headers=client.key("runs:write", "sweeps:write"))
    assert service.json() == {
        "user_id": None,
        "scopes": ["runs:write", "sweeps:write"],
        "kind": "service key",
    }
