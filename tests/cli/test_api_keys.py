"""`licchavi api-key create/list/revoke` on PostgreSQL and on the embedded SQLite default: user
keys, expiry, listing, revocation, and one-line errors with a non-zero exit."""

from fastapi.testclient import TestClient

from app.identity.security import forget_verified_keys
from app.main import create_app
from tests.cli.test_commands import licchavi

URL = "/api/v1/comparisons"
BODY = {
    "video_a": "yt:aaa",
    "video_b": "yt:bbb",
    "criteria_scores": [{"criterion": "largely_recommended", "score": 1}],
}


def test_user_keys_are_created_listed_and_revoked(committed_database: str) -> None:
    created = licchavi(
        "api-key", "create", "--user", "alice", "--name", "alice-web",
        "--scopes", "comparisons:write,scores:read_local", "--expires-in", "30d",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    prefix = key.split("_")[1]
    service = licchavi("api-key", "create", "--scopes", "runs:write", "--name", "backend")
    assert service.returncode == 0, service.stderr

    with TestClient(create_app()) as client:
        answer = client.post(URL, json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 201 and answer.json()["user_id"] == "alice"

    listing = licchavi("api-key", "list")
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if prefix in line)
    for shown in ("alice-web", "alice", "active"):
        assert shown in line
    assert key not in listing.stdout  # only prefixes are listed

    revoked = licchavi("api-key", "revoke", prefix)
    assert revoked.returncode == 0 and prefix in revoked.stdout
    backend_key = service.stdout.strip()
    assert licchavi("api-key", "revoke", backend_key).returncode == 0  # the whole key works too
    listing = licchavi("api-key", "list").stdout
    assert sum("revoked" in line for line in listing.splitlines()) == 2

    # This process verified the key above and may trust it for the cache window (4 s; reaching
    # every process within 5 s is tests/identity/test_key_revocation.py's); start from a fresh cache.
    forget_verified_keys()
    with TestClient(create_app()) as client:
        answer = client.post(URL, json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 401


def test_bad_requests_are_one_line_errors(committed_database: str) -> None:
    for args, expected, code in [
        (("revoke", "deadbeef"), "no API key 'deadbeef'", 1),
        (("revoke", "lk_deadbeef_secretpart"), "no API key lk_deadbeef_…", 1),
        (("create", "--scopes", "admin", "--user", "alice"), "a user key may hold only", 2),
        (("create", "--scopes", "comparisons:write", "--expires-in", "soon"), "neither", 2),
        (("create", "--scopes", "comparisons:write", "--expires-in", "2001-01-01"), "future", 2),
        (("create", "--scopes", "comparisons:write", "--user", "not a user"), "invalid user", 2),
        (
            ("create", "--scopes", "comparisons:write", "--expires-in", "9" * 30 + "d"),
            "ten years",
            2,
        ),
        (("create", "--scopes", "comparisons:write", "--expires-in", "9999-12-31"), "ten years", 2),
        (("create", "--scopes", "comparisons:write", "--name", "a\x1b[31mb"), "one line", 2),
        (("create", "--scopes", ""), "at least one scope", 2),
        (("create", "--scopes", ",", "--user", "alice"), "at least one scope", 2),
    ]:
        result = licchavi("api-key", *args)
        assert result.returncode == code, (args, result.stderr)
        assert expected in result.stderr and "secretpart" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    listing = licchavi("api-key", "list")
    assert listing.returncode == 0 and "active" not in listing.stdout  # nothing was created
