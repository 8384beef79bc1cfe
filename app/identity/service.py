"""API key lifecycle: expiry parsing, listing, finding a key by itself or its prefix, revoking."""

import re
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.identity.security import KEY_PREFIX, aware, hash_key
from app.models import ApiKey

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class UnknownKey(LookupError):
    """No key has this prefix (or the full key does not match it)."""


# The furthest a key's expiry may lie; a key meant to last is created without one.
MAX_KEY_LIFETIME = timedelta(days=3653)


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `2w` (from now) or an ISO date or date-time (a date means its midnight UTC,
    a date-time without zone is UTC), in UTC; ValueError when it is neither, or lies in the past
    or beyond `MAX_KEY_LIFETIME`."""
    now = now or datetime.now(UTC)
    duration = _DURATION.match(text)
    if duration:
        try:
            moment = now + timedelta(**{_UNITS[duration[2]]: int(duration[1])})
        except OverflowError:
            raise ValueError(f"expiry {text.strip()!r} is {_TOO_FAR}") from None
    else:
        try:
            parsed = (
                datetime.fromisoformat(text)
                if "T" in text or " " in text.strip()
                else datetime.combine(date.fromisoformat(text), datetime.min.time())
            )
        except ValueError:
            raise ValueError(
                f"expiry {text!r} is neither a duration (30d, 12h, 2w) nor an ISO date"
            ) from None
        moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return bounded_expiry(moment, now)


_TOO_FAR = "more than ten years ahead (leave the expiry out for a key that does not expire)"


def bounded_expiry(moment: datetime, now: datetime | None = None) -> datetime:
    """`moment` (timezone-aware) in UTC; ValueError when it is not in the future or lies more
    than `MAX_KEY_LIFETIME` ahead (dates near year 9999 do not even fit the database)."""
    now = now or datetime.now(UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # beyond year 9999 once in UTC
        raise ValueError(f"expiry {moment.isoformat()} is {_TOO_FAR}") from None
    if moment <= now:
        raise ValueError(f"expiry {moment.isoformat()} is not in the future")
    if moment > now + MAX_KEY_LIFETIME:
        raise ValueError(f"expiry {moment.isoformat()} is {_TOO_FAR}")
    return moment


KeyStatus = Literal["active", "expired", "revoked"]


def key_status(row: ApiKey, now: datetime | None = None) -> KeyStatus:
    """`revoked`, `expired` or `active`."""
    if row.revoked_at is not None:
        return "revoked"
    expires_at = aware(row.expires_at)
    if expires_at is not None and expires_at <= (now or datetime.now(UTC)):
        return "expired"
    return "active"


def list_keys(
    session: Session, *, limit: int | None = None, offset: int = 0
) -> tuple[list[ApiKey], int]:
    """A page of keys, oldest first, and how many there are."""
    rows = session.exec(select(ApiKey).order_by(col(ApiKey.id)).offset(offset).limit(limit)).all()
    total = session.exec(select(sa.func.count()).select_from(ApiKey)).one()
    return list(rows), int(total)


def find_key(session: Session, key_or_prefix: str) -> ApiKey:
    """The key named by the full `lk_…` key or by its prefix (the part after `lk_`)."""
    text = key_or_prefix.strip()
    parts = text.split("_", 2)
    full = len(parts) == 3 and parts[0] == KEY_PREFIX
    prefix = parts[1] if full else text.removeprefix(KEY_PREFIX + "_")
    row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if row is None or (full and row.key_hash != hash_key(text)):
        raise UnknownKey(f"no API key {shown_key(text)}")
    return row


def revoke_key(session: Session, key_or_prefix: str) -> ApiKey:
    """Revoke the key (again is a no-op); every API process refuses it within seconds."""
    row = find_key(session, key_or_prefix)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.add(row)
        session.flush()
    return row


def shown_key(text: str) -> str:
    """`text` as it may be echoed: a whole key by its prefix only, anything else quoted."""
    # Never echo a whole secret back: a mistyped full key shows its prefix only.
    parts = text.split("_", 2)
    return f"{parts[0]}_{parts[1]}_…" if len(parts) == 3 else repr(text)
