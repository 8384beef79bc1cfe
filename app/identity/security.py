"""Credentials: API keys (generation, peppered hashing, expiry, revocation), bearer JWTs, and the
scope-checking dependency that turns either into the caller's `Principal`."""

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Header
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from app.api.schemas import is_one_line
from app.core.config import get_settings
from app.core.db import (
    SessionDep,
    get_engine,
    is_read_only,
    is_request_session,
    read_only,
    without_waiting,
)
from app.core.errors import Forbidden, NotAuthenticated, ServiceUnavailable, database_busy
from app.identity.tokens import InvalidToken, KeySetUnavailable, forget_key_sets, verify_token
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
# What a key bound to one user may hold: its own comparisons and local scores, and — when an
# operator grants them, to a researcher say — training runs and sweeps, which publish or tune
# everyone's scores but act for no other user. Criteria and keys stay with service keys.
USER_SCOPES = frozenset({"comparisons:write", "scores:read_local", "runs:write", "sweeps:write"})
# An `Authorization` header longer than this is refused before any parsing or decoding.
MAX_CREDENTIAL_BYTES = 8192
# The last-used time of a key is written at most this often.
LAST_USED_EVERY = timedelta(seconds=60)


class UnknownScope(ValueError):
    pass


def hash_key(key: str) -> str:
    # Keys carry 190 bits of randomness, so a fast keyed hash is enough; the pepper keeps a leaked
    # table from being checked offline.
    return hmac.new(get_settings().secret_key.encode(), key.encode(), hashlib.sha256).hexdigest()


def parse_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        # A key without scopes is refused by every route: never a useful key.
        raise UnknownScope(f"a key needs at least one scope; known: {', '.join(SCOPES)}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise UnknownScope(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return sorted(set(scopes))


def create_api_key(
    session: Session,
    *,
    name: str,
    scopes: list[str],
    user_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key's hash and return the row with the key, which is never retrievable again.

    A key with a `user_id` acts for that user alone and may hold only the user scopes."""
    if not 1 <= len(name) <= 100 or not is_one_line(name):
        raise ValueError("a key's name is one line of 1 to 100 characters, no control characters")
    parsed = parse_scopes(scopes)
    if user_id is not None and not set(parsed) <= USER_SCOPES:
        raise UnknownScope(
            f"a user key may hold only {', '.join(sorted(USER_SCOPES))}; "
            f"not {', '.join(sorted(set(parsed) - USER_SCOPES))}"
        )
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=hash_key(key),
        scopes=" ".join(parsed),
        user_id=user_id,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


@dataclass(frozen=True)
class Principal:
    """Who is calling: a stable credential id (`key:<id>` or `jwt:<issuer>:<user>`), its scopes,
    and the user it acts for (None for a service key, which may act for any user)."""

    credential: str
    scopes: frozenset[str]
    user_id: str | None = None

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def acting_for(self, named: str | None) -> str | None:
        """The user a request acts for: a user credential's own, whether named or omitted;
        naming another user is forbidden. A service credential acts for whoever is named."""
        if self.user_id is None or named is None or named == self.user_id:
            return self.user_id if self.user_id is not None else named
        raise Forbidden(
            f"This credential acts for user {self.user_id!r} only, not {named!r}.",
        )


def _unauthenticated(detail: str) -> NotAuthenticated:
    return NotAuthenticated(detail, headers={"WWW-Authenticate": "Bearer"})


# Verified credentials are remembered briefly so a busy client costs no lookup per request; a
# revoked key stops working in every process within this many seconds (and an expired key or
# token at its expiry).
KEY_CACHE_SECONDS = 4.0
_verified: dict[str, tuple[float, float, Principal]] = {}
_touched: dict[int, float] = {}


def forget_verified_keys() -> None:
    _verified.clear()
    _touched.clear()
    forget_key_sets()


def _remember(credential: str, principal: Principal, not_after: float) -> Principal:
    """Cache `principal` for `credential` until the cache window or `not_after` (monotonic)."""
    if len(_verified) > 10_000:  # bound the memory a flood of distinct credentials could take
        _verified.clear()
    _verified[credential] = (time.monotonic(), not_after, principal)
    return principal


def _bearer(authorization: str) -> str | None:
    scheme, _, credential = authorization.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def cached_principal(authorization: str | None) -> Principal | None:
    """The principal of a recently verified credential, without I/O; None when it must be
    looked up."""
    if not authorization:
        return None
    credential = _bearer(authorization)
    cached = _verified.get(credential) if credential else None
    if cached is not None:
        now = time.monotonic()
        if now - cached[0] < KEY_CACHE_SECONDS and now < cached[1]:
            return cached[2]
    return None


def authenticate(session: Session, authorization: str | None) -> Principal:
    """The principal of an `Authorization: Bearer` header holding an `lk_…` key or a JWT."""
    if not authorization:
        raise _unauthenticated(
            "This operation needs a credential: `Authorization: Bearer <API key or token>`."
        )
    if len(authorization) > MAX_CREDENTIAL_BYTES:
        raise _unauthenticated(f"Credential longer than {MAX_CREDENTIAL_BYTES} bytes.")
    principal = cached_principal(authorization)
    if principal is not None:
        return principal
    credential = _bearer(authorization)
    if credential is None:
        raise _unauthenticated("Use the Bearer scheme: `Authorization: Bearer <credential>`.")
    if credential.startswith(KEY_PREFIX + "_"):
        return _authenticate_key(session, credential)
    # A JWT is three base64url segments; an API key never contains a dot.
    if credential.count(".") == 2:
        return _authenticate_token(credential)
    raise _unauthenticated("Malformed credential: neither an API key nor a JWT.")


def _authenticate_key(session: Session, key: str) -> Principal:
    parts = key.split("_", 2)
    if len(parts) != 3:
        raise _unauthenticated("Malformed API key.")
    row = session.exec(select(ApiKey).where(ApiKey.prefix == parts[1])).first()
    now = datetime.now(UTC)
    if (
        row is None
        or row.revoked_at is not None
        or not hmac.compare_digest(row.key_hash, hash_key(key))
    ):
        raise _unauthenticated("Unknown or revoked API key.")
    expires_at = aware(row.expires_at)
    if expires_at is not None and expires_at <= now:
        raise _unauthenticated("Expired API key.")
    assert row.id is not None
    _touch(session, row.id, now)
    principal = Principal(
        credential=f"key:{row.id}", scopes=frozenset(row.scopes.split()), user_id=row.user_id
    )
    not_after = (
        math.inf if expires_at is None else time.monotonic() + (expires_at - now).total_seconds()
    )
    return _remember(key, principal, not_after)


def _authenticate_token(token: str) -> Principal:
    try:
        verified = verify_token(token)
    except InvalidToken as exc:
        raise _unauthenticated(str(exc)) from exc
    except KeySetUnavailable as exc:
        raise ServiceUnavailable(f"Bearer tokens cannot be checked now: {exc}") from exc
    principal = Principal(
        credential=f"jwt:{verified.issuer}:{verified.user_id}",
        scopes=verified.scopes,
        user_id=verified.user_id,
    )
    return _remember(token, principal, time.monotonic() + verified.expires - time.time())


def aware(moment: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without their zone; they are stored in UTC.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _touch(session: Session, key_id: int, now: datetime) -> None:
    """Record that the key was used, at most once a minute per key across every process."""
    last = _touched.get(key_id)
    if last is not None and time.monotonic() - last < LAST_USED_EVERY.total_seconds():
        return
    _touched[key_id] = time.monotonic()
    statement = (
        sa.update(ApiKey)
        .where(
            col(ApiKey.id) == key_id,
            sa.or_(
                col(ApiKey.last_used_at).is_(None),
                col(ApiKey.last_used_at) < now - LAST_USED_EVERY,
            ),
        )
        .values(last_used_at=now)
        # The row just read stays as read: no evaluation of the condition on loaded objects.
        .execution_options(synchronize_session=False)
    )
    if is_read_only(session):
        # The key was read outside the request's transaction (see `_authenticate_apart`), which
        # must not wait for a write lock: the use is recorded apart, or skipped while another
        # write holds SQLite's lock (the next request of the key records it).
        if not _record_use_apart(statement):
            _touched.pop(key_id, None)
        return
    session.execute(statement)
    if is_request_session(session):
        # Committed now, so that a request failing later still records the use and no other
        # process waits on the row for the length of this request. Nothing else is written yet:
        # credentials are checked before the route runs.
        session.commit()


def _record_use_apart(statement: Any) -> bool:
    """Run the last-use update in a short transaction of its own; False when SQLite's write lock
    is held elsewhere (no wait: a read request never queues behind a write)."""
    try:
        with without_waiting(get_engine()).begin() as connection:
            connection.execute(statement)
    except OperationalError as exc:
        if not database_busy(exc):
            raise
        return False
    return True


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
        # Async so that a credential verified within the last seconds costs no thread hop; only
        # a lookup in the database or a key set runs in the threadpool.
        principal = cached_principal(authorization)
        if principal is None:
            principal = await run_in_threadpool(_authenticate_apart, session, authorization)
        if not principal.has(scope):
            raise Forbidden(f"This credential lacks the `{scope}` scope.")
        return principal

    return dependency


def require_started_by(principal: Principal, started_by: str | None, what: str) -> None:
    """A user's credential (a user key, a token) steers only the `what` it started itself; a
    service credential steers any."""
    if principal.user_id is not None and started_by != principal.credential:
        raise Forbidden(
            f"This credential acts for user {principal.user_id!r}: it steers only the {what}"
            " it started."
        )


def require_service_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency factory: `scope` held by a service credential, for what is service-wide (the
    production training defaults): a user's credential may hold the scope for its own work."""
    holds_scope = require_scope(scope)

    async def dependency(principal: Annotated[Principal, Depends(holds_scope)]) -> Principal:
        if principal.user_id is not None:
            raise Forbidden(
                f"This credential acts for user {principal.user_id!r}; the production training"
                " defaults are service-wide and change with a service credential only."
            )
        return principal

    return dependency


def scoped(scope: str) -> Any:
    """`dependencies=[scoped("…")]` for routes that need a scope but not the principal."""
    return Depends(require_scope(scope))
