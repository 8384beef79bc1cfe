"""Bearer JWTs on PostgreSQL and on the embedded SQLite default: HS256 secrets, RS256/ES256 key
sets from a file or a URL (rotation, a floor on re-fetching), the user and scopes they grant, and
every kind of bad token refused with a 401 that changes nothing."""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from app.core.config import Settings, get_settings
from app.identity.security import forget_verified_keys
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import ApiClient
from tests.identity.test_identity import URL, stored_users, without_user

ISSUER = "https://idp.example.org/"
AUDIENCE = "licchavi"
SECRET = "an HS256 secret of the identity provider, long enough"


def configure(monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    """JWT settings for the application under test (read on each verification)."""
    monkeypatch.setenv("JWT_ISSUER", ISSUER)
    monkeypatch.setenv("JWT_AUDIENCE", AUDIENCE)
    for name, value in settings.items():
        monkeypatch.setenv(name.upper(), value)
    get_settings.cache_clear()
    forget_verified_keys()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], body: dict[str, Any], sign: Any) -> str:
    """A token built without the library (which refuses to build the forgeries below)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


class IdentityProvider:
    """An RS256 and an ES256 key, published as a JWKS."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_kid, self.ec_kid = "rsa-1", "ec-1"

    def rotate(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_kid = "rsa-2"

    def jwks(self) -> str:
        keys = [
            {**RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True), "kid": self.rsa_kid},
            {**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True), "kid": self.ec_kid},
        ]
        return json.dumps({"keys": keys})

    def rs256(self, **overrides: Any) -> str:
        return jwt.encode(claims(**overrides), self.rsa, "RS256", headers={"kid": self.rsa_kid})

    def es256(self, **overrides: Any) -> str:
        return jwt.encode(claims(**overrides), self.ec, "ES256", headers={"kid": self.ec_kid})

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
def idp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityProvider:
    """A provider whose key set is a file, configured as JWT_JWKS (no HS256 secret)."""
    provider = IdentityProvider()
    path = tmp_path / "jwks.json"
    path.write_text(provider.jwks())
    configure(monkeypatch, jwt_jwks=str(path))
    return provider


@pytest.fixture
def jwks_server(idp: IdentityProvider) -> Iterator[tuple[str, list[str]]]:
    """The provider's key set over HTTP; yields its URL and the paths requested."""
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            body = idp.jwks().encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", requested
    finally:
        server.shutdown()
        server.server_close()


def test_an_hs256_token_writes_and_reads_as_its_user(
    client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, jwt_secret=SECRET)
    token = bearer(jwt.encode(claims(), SECRET, "HS256"))
    # Repeated: on SQLite the later posts take the single-write fast path.
    for score in (1, 2, 3):
        own = client.post(URL, json=without_user(largely_recommended=score), headers=token)
        assert own.status_code in (200, 201) and own.json()["user_id"] == "alice"
        assert_problem(client.post(URL, json=payload(user="bob"), headers=token), 403)
    assert client.get("/api/v1/users/alice/scores", headers=token).status_code == 200
    assert_problem(client.get("/api/v1/users/bob/scores", headers=token), 403)
    assert_problem(client.delete(URL + "/bob/yt:aaa/yt:bbb", headers=token), 403)
    assert stored_users(client) == ["alice"]
    assert client.delete(URL + "/alice/yt:aaa/yt:bbb", headers=token).status_code == 204


def test_rs256_and_es256_tokens_from_a_key_set_file(
    client: ApiClient, idp: IdentityProvider
) -> None:
    assert client.post(URL, json=without_user(), headers=bearer(idp.rs256())).status_code == 201
    carol = bearer(idp.es256(sub="carol"))
    assert client.post(URL, json=without_user(), headers=carol).status_code == 201
    assert stored_users(client) == ["alice", "carol"]
    # The EC key does not verify a token that claims RS256 under its key id.
    forged = jwt.encode(claims(sub="dave"), idp.rsa, "RS256", headers={"kid": idp.ec_kid})
    assert_problem(client.post(URL, json=without_user(), headers=bearer(forged)), 401)


@pytest.mark.parametrize("floor", [0, 3600])
def test_a_rotated_key_is_fetched_on_its_first_token_no_more_often_than_the_floor(
    client: ApiClient,
    idp: IdentityProvider,
    jwks_server: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    floor: int,
) -> None:
    url, requested = jwks_server
    configure(monkeypatch, jwt_jwks=url, jwt_jwks_refetch_seconds=str(floor))
    assert client.post(URL, json=without_user(), headers=bearer(idp.rs256())).status_code == 201
    assert len(requested) == 1
    # Tokens with made-up key ids: each may re-fetch, but only once the floor has passed.
    for n in range(3):
        made_up = jwt.encode(claims(), idp.rsa, "RS256", headers={"kid": f"made-up-{n}"})
        assert_problem(client.post(URL, json=without_user(), headers=bearer(made_up)), 401)
    assert len(requested) == (4 if floor == 0 else 1)
    idp.rotate()
    rotated = client.post(URL, json=without_user(), headers=bearer(idp.rs256(sub="bob")))
    if floor == 0:
        assert rotated.status_code == 201 and len(requested) == 5
        assert stored_users(client) == ["alice", "bob"]
    else:
        assert_problem(rotated, 401)
        assert len(requested) == 1 and stored_users(client) == ["alice"]


def _bad_tokens(idp: IdentityProvider) -> dict[str, str]:
    now = int(time.time())
    good = idp.rs256()
    head, body, signature = good.split(".")
    tampered_body = b64(json.dumps(claims(sub="mallory")).encode())
    return {
        "expired": idp.rs256(iat=now - 3600, exp=now - 600),
        "not yet valid": idp.rs256(nbf=now + 600),
        "wrong issuer": idp.rs256(iss="https://evil.example.org/"),
        "wrong audience": idp.rs256(aud="another-service"),
        "no expiry": idp.rs256(exp=None),
        "algorithm none": hand_made({"alg": "none", "typ": "JWT"}, claims(), lambda _: b""),
        # The RSA public key used as an HMAC secret (the HS/RS confusion attack).
        "HS256 signed with the public key": hand_made(
            {"alg": "HS256", "typ": "JWT", "kid": idp.rsa_kid},
            claims(),
            lambda data: hmac.new(idp.public_pem(), data, hashlib.sha256).digest(),
        ),
        "tampered": f"{head}.{tampered_body}.{signature}",
        "bad signature": f"{head}.{body}.{signature[:-6]}AAAAAA",
        "oversized": idp.rs256(padding="x" * 9000),
        "not a token": "a.b.c",
    }


BAD_TOKENS = [
    "expired",
    "not yet valid",
    "wrong issuer",
    "wrong audience",
    "no expiry",
    "algorithm none",
    "HS256 signed with the public key",
    "tampered",
    "bad signature",
    "oversized",
    "not a token",
]


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_a_bad_token_is_a_401_that_changes_nothing(
    client: ApiClient, idp: IdentityProvider, case: str
) -> None:
    token = _bad_tokens(idp)[case]
    for method, path, body in [
        ("POST", URL, without_user()),
        ("POST", URL + "/bulk", [without_user()]),
        ("DELETE", URL + "/alice/yt:aaa/yt:bbb", None),
        ("GET", "/api/v1/users/alice/scores", None),
    ]:
        response = client.request(method, path, json=body, headers=bearer(token))
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get(URL).json()["total"] == 0
    # The same provider's good token still works afterwards.
    assert client.post(URL, json=without_user(), headers=bearer(idp.rs256())).status_code == 201


def test_an_hs256_token_is_refused_when_only_a_key_set_is_configured(
    client: ApiClient, idp: IdentityProvider
) -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    detail = assert_problem(client.post(URL, json=without_user(), headers=bearer(token)), 401)
    assert "HS256" in detail["detail"]


def test_scopes_come_from_the_scope_claim_mapped_onto_ours(
    client: ApiClient, idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = bearer(idp.rs256(scope="openid scores:read_local admin runs:write"))
    assert (
        "lacks"
        in assert_problem(client.post(URL, json=without_user(), headers=reader), 403)["detail"]
    )
    # Past the credential checks: alice has no comparisons yet.
    assert client.get("/api/v1/users/alice/scores", headers=reader).status_code == 404
    assert_problem(client.get("/api/v1/api-keys", headers=reader), 403)  # admin not granted
    nothing = bearer(idp.rs256(scope="openid profile"))
    assert_problem(client.get("/api/v1/users/alice/scores", headers=nothing), 403)
    # Without a scope claim: the configured default.
    configure(monkeypatch, jwt_default_scopes="scores:read_local")
    default = bearer(idp.rs256())
    assert_problem(client.post(URL, json=without_user(), headers=default), 403)
    # Granting more is a deliberate setting.
    configure(monkeypatch, jwt_grantable_scopes="comparisons:write scores:read_local admin")
    operator = bearer(idp.rs256(scope="admin"))
    assert client.get("/api/v1/api-keys", headers=operator).status_code == 200


def test_the_user_id_comes_from_the_configured_claim(
    client: ApiClient, idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, jwt_user_claim="email")
    token = bearer(idp.rs256(sub="opaque-123", email="alice@example.org"))
    answer = client.post(URL, json=without_user(), headers=token)
    assert answer.status_code == 201 and answer.json()["user_id"] == "alice@example.org"
    no_claim = bearer(idp.rs256(email=None))
    assert_problem(client.post(URL, json=without_user(), headers=no_claim), 401)
    bad_id = bearer(idp.rs256(email="not a user id"))
    assert_problem(client.post(URL, json=without_user(), headers=bad_id), 401)


def test_tokens_are_refused_unless_configured(client: ApiClient) -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    detail = assert_problem(client.post(URL, json=without_user(), headers=bearer(token)), 401)
    assert "JWT_SECRET" in detail["detail"]
    assert client.get(URL).json()["total"] == 0


def test_jwt_settings_need_an_issuer_and_an_audience() -> None:
    with pytest.raises(ValidationError, match="JWT_ISSUER and JWT_AUDIENCE"):
        Settings(jwt_secret=SECRET, jwt_audience=AUDIENCE)
    assert Settings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER).jwt_enabled


def test_an_unreadable_key_set_is_a_503_not_a_pass(
    client: ApiClient, idp: IdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, jwt_jwks=str(tmp_path / "missing.json"))
    response = client.post(URL, json=without_user(), headers=bearer(idp.rs256()))
    assert_problem(response, 503)
    assert client.get(URL).json()["total"] == 0
