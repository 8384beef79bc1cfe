"""Bearer JWTs of the frontend's identity provider: verified against an HS256 secret or an
RS256/ES256 key set (a file or a URL, cached, re-fetched on an unknown key id), with issuer,
audience and expiry checked, then read as a user id and the scopes they grant."""

import logging
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from app.core.config import Settings, get_settings

logger = logging.getLogger(__name__)

SECRET_ALGORITHMS = frozenset({"HS256"})
KEY_SET_ALGORITHMS = frozenset({"RS256", "ES256"})
# The user ids comparisons accept (app.api.schemas.UserId).
_USER_ID = re.compile(r"^[\w.@+\-:]{1,150}$")
FETCH_TIMEOUT_SECONDS = 5.0


class InvalidToken(ValueError):
    """The token is not one this service accepts; the message says why (it is sent back)."""


class KeySetUnavailable(RuntimeError):
    """The key set could not be read and none was read before."""


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    user_id: str
    scopes: frozenset[str]
    expires: float  # Unix time, leeway included


def verify_token(token: str) -> VerifiedToken:
    """Verify `token`; InvalidToken says why it is refused."""
    settings = get_settings()
    if not settings.jwt_enabled:
        raise InvalidToken("Bearer tokens are not accepted here (no JWT_SECRET or JWT_JWKS).")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"Malformed token: {exc}") from exc
    algorithm = header.get("alg")
    key: Any
    # The algorithm picks the key source, and each source verifies only its own algorithms: an
    # HS256 token is never checked against a public key (nor `none` against anything).
    if algorithm in SECRET_ALGORITHMS and settings.jwt_secret:
        key = settings.jwt_secret
    elif algorithm in KEY_SET_ALGORITHMS and settings.jwt_jwks:
        jwk = key_set(settings).key(header.get("kid"))
        if jwk.algorithm_name != algorithm:
            raise InvalidToken(f"Key {header.get('kid')!r} does not sign {algorithm}.")
        key = jwk.key
    else:
        raise InvalidToken(f"Token algorithm {algorithm!r} is not accepted.")
    user_claim = settings.jwt_user_claim
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
            options={"require": ["exp", "iss", "aud", user_claim]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("Expired token.") from exc
    except jwt.ImmatureSignatureError as exc:
        raise InvalidToken("Token not valid yet.") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"Invalid token: {exc}") from exc
    user = claims[user_claim]
    if not isinstance(user, str) or not _USER_ID.match(user):
        raise InvalidToken(f"Claim {user_claim!r} is not a valid user id.")
    return VerifiedToken(
        issuer=str(claims["iss"]),
        user_id=user,
        scopes=granted_scopes(claims, settings),
        expires=float(claims["exp"]) + settings.jwt_leeway_seconds,
    )


def granted_scopes(claims: dict[str, Any], settings: Settings) -> frozenset[str]:
    """Our scopes named by the token's `scope` claim (space-separated, or a list) that tokens may
    grant; the configured default when the claim is absent."""
    if "scope" not in claims:
        return frozenset(settings.jwt_default_scopes.split())
    raw = claims["scope"]
    names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return frozenset(str(n) for n in names) & frozenset(settings.jwt_grantable_scopes.split())


class KeySet:
    """A JWKS read from a file or a URL, used for `max_age` seconds and re-read on an unknown key
    id (a rotation), but never more often than every `refetch_floor` seconds, so tokens with
    made-up key ids cannot make the service hammer the provider."""

    def __init__(self, source: str, *, max_age: float, refetch_floor: float) -> None:
        self.source = source
        self.max_age = max_age
        self.refetch_floor = refetch_floor
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._read_at = -float("inf")  # last successful read
        self._tried_at = -float("inf")  # last attempt
        self._lock = threading.Lock()
        self.fetches = 0

    def key(self, kid: object) -> jwt.PyJWK:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.max_age and now - self._tried_at >= self.refetch_floor:
                self._refresh(now)
            found = self._lookup(kid)
            if found is None and now - self._tried_at >= self.refetch_floor:
                self._refresh(now)
                found = self._lookup(kid)
        if found is None:
            raise InvalidToken(f"Unknown signing key {kid!r}.")
        return found

    def _lookup(self, kid: object) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if isinstance(kid, str) else None

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        self.fetches += 1
        try:
            keys = jwt.PyJWKSet.from_json(self._read()).keys
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            if not self._keys:
                raise KeySetUnavailable(f"cannot read the JWT key set: {exc}") from exc
            logger.warning(
                "kept the cached JWT key set: re-reading %s failed: %s", self.source, exc
            )
            return
        self._keys = {key.key_id: key for key in keys}
        self._read_at = now

    def _read(self) -> str:
        if self.source.startswith(("https://", "http://")):
            with urllib.request.urlopen(self.source, timeout=FETCH_TIMEOUT_SECONDS) as response:
                return str(response.read().decode())
        return Path(self.source).read_text()


_key_sets: dict[tuple[str, float, float], KeySet] = {}
_key_sets_lock = threading.Lock()


def key_set(settings: Settings) -> KeySet:
    """The process's key set for the configured source."""
    assert settings.jwt_jwks is not None
    index = (settings.jwt_jwks, settings.jwt_jwks_cache_seconds, settings.jwt_jwks_refetch_seconds)
    with _key_sets_lock:
        found = _key_sets.get(index)
        if found is None:
            found = _key_sets[index] = KeySet(
                settings.jwt_jwks,
                max_age=settings.jwt_jwks_cache_seconds,
                refetch_floor=settings.jwt_jwks_refetch_seconds,
            )
        return found


def forget_key_sets() -> None:
    with _key_sets_lock:
        _key_sets.clear()
