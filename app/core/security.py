"""API keys: generation, peppered hashing, and the scope-checking dependency for write routes."""

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from app.core.config import get_settings
from app.core.db import SessionDep, get_engine, is_request_session, read_only
from app.core.errors import Forbidden, NotAuthenticated
from app.models import ApiKey

KEY_PREFIX = "lk"
SCOPES = {
    "comparisons:write": "create, replace and delete comparisons",
    "criteria:write": "add criteria",
    "scores:read_local": "read individual (per-user) scores",
    "runs:write": "start and cancel training runs",
    "sweeps:write": "submit and steer sweeps",
    "admin": "every scope",
}


class UnknownScope(ValueError):
    pass


def hash_key(key: str) -> str:
    # Keys carry 190 bits of randomness, so a fast keyed hash is enough; the pepper keeps a leaked
    # table from being checked offline.
    return hmac.new(get_settings().secret_key.encode(), key.encode(), hashlib.sha256).hexdigest()


def parse_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise UnknownScope(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return sorted(set(scopes))


def create_api_key(session: Session, *, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Store a new key's hash and return the row with the key, which is never retrievable again."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKey(
        name=name, prefix=prefix, key_hash=hash_key(key), scopes=" ".join(parse_scopes(scopes))
    )
    session.add(row)
    session.flush()
    return row, key


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's id and scopes."""

    key_id: int
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


# Verified keys are remembered briefly so a busy client costs no lookup per request; a revoked key
# stops working within this many seconds.
KEY_CACHE_SECONDS = 5.0
_verified: dict[str, tuple[float, Principal]] = {}


def forget_verified_keys() -> None:
    _verified.clear()


def cached_principal(authorization: str | None) -> Principal | None:
    """The principal of a recently verified key, without I/O; None when it must be looked up."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    cached = _verified.get(key.strip())
    if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_SECONDS:
        return cached[1]
    return None


def authenticate(session: Session, authorization: str | None) -> Principal:
    if not authorization:
        raise NotAuthenticated(
            "This operation needs an API key: `Authorization: Bearer <key>`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, key = authorization.partition(" ")
    parts = key.strip().split("_", 2)
    if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != KEY_PREFIX:
        raise NotAuthenticated("Malformed API key.", headers={"WWW-Authenticate": "Bearer"})
    key = key.strip()
    cached = _verified.get(key)
    if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_SECONDS:
        return cached[1]
    row = session.exec(select(ApiKey).where(ApiKey.prefix == parts[1])).first()
    if (
        row is None
        or row.revoked_at is not None
        or not hmac.compare_digest(row.key_hash, hash_key(key))
    ):
        raise NotAuthenticated(
            "Unknown or revoked API key.", headers={"WWW-Authenticate": "Bearer"}
        )
    assert row.id is not None
    principal = Principal(key_id=row.id, scopes=frozenset(row.scopes.split()))
    if len(_verified) > 10_000:  # bound the memory a flood of distinct keys could take
        _verified.clear()
    _verified[key] = (time.monotonic(), principal)
    return principal


def _authenticate_apart(session: Session, authorization: str | None) -> Principal:
    """`authenticate` in a read-only transaction of its own, not in the request's: on SQLite the
    request's transaction takes the write lock, which must wait for the write's turn (the
    single-write limiter), not be held while the key is checked and the turn awaited."""
    if not is_request_session(session):
        return authenticate(session, authorization)  # a caller's or a test's own transaction
    with Session(read_only(get_engine())) as own:
        return authenticate(own, authorization)


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency factory: the caller must hold `scope` (or `admin`)."""

    async def dependency(
        session: SessionDep, authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        # Async so that a key verified within the last seconds costs no thread hop; only a
        # lookup in the database runs in the threadpool.
        principal = cached_principal(authorization)
        if principal is None:
            principal = await run_in_threadpool(_authenticate_apart, session, authorization)
        if not principal.has(scope):
            raise Forbidden(f"This API key lacks the `{scope}` scope.")
        return principal

    return dependency


def scoped(scope: str) -> Any:
    """`dependencies=[scoped("…")]` for routes that need a scope but not the principal."""
    return Depends(require_scope(scope))
