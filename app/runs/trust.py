"""Trusted users: marking and unmarking them, listing them, and the set a training run uses."""

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, func, select

from app.models import User


class UnknownUser(LookupError):
    """No user has this id."""


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; they are stored in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def set_trusted(session: Session, user_id: str, trusted: bool) -> User:
    """Mark the user trusted (creating the user if no comparison named them yet) or untrusted.

    One upsert statement, so a comparison that creates the same user at the same moment cannot
    make it fail on the unique id.
    """
    now = datetime.now(UTC)
    table = User.__table__  # type: ignore[attr-defined]
    values = {"external_id": user_id, "created_at": now, "trusted": trusted}
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    statement = insert.values(**values, trust_changed_at=now).on_conflict_do_update(
        index_elements=["external_id"],
        set_={"trusted": trusted, "trust_changed_at": now},
    )
    session.execute(statement)
    session.flush()
    row = session.exec(select(User).where(User.external_id == user_id)).one()
    session.refresh(row)
    return row


def untrust(session: Session, user_id: str) -> User:
    """Remove the mark; UnknownUser if nobody has this id."""
    row = session.exec(select(User).where(User.external_id == user_id)).first()
    if row is None:
        raise UnknownUser(f"No user with id {user_id!r}.")
    if row.trusted or row.trust_changed_at is None:
        row.trusted = False
        row.trust_changed_at = datetime.now(UTC)
        session.add(row)
        session.flush()
    return row


def list_users(
    session: Session, *, trusted: bool | None = None, limit: int | None = None, offset: int = 0
) -> tuple[list[User], int]:
    """Users in id order (all, or only the trusted or untrusted ones) and their total."""
    query = select(User)
    count = select(func.count()).select_from(User)
    if trusted is not None:
        query = query.where(User.trusted == trusted)
        count = count.where(User.trusted == trusted)
    query = query.order_by(col(User.id)).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.exec(query).all()), int(session.exec(count).one())


def trusted_users(connection: Connection) -> frozenset[str]:
    """External ids of every trusted user (what a training run's voting rights start from)."""
    rows = connection.execute(sa.text("SELECT external_id FROM users WHERE trusted")).all()
    return frozenset(str(external_id) for (external_id,) in rows)


def mark_users(session: Session, marks: dict[str, bool]) -> int:
    """Apply (user id → trusted) marks to existing users, as an import's `trusted` column asks;
    returns how many changed."""
    if not marks:
        return 0
    now = datetime.now(UTC)
    changed = 0
    for value in (True, False):
        ids = sorted(user for user, mark in marks.items() if mark is value)
        for start in range(0, len(ids), 1000):
            result = session.execute(
                sa.update(User)
                .where(col(User.external_id).in_(ids[start : start + 1000]))
                .where(col(User.trusted).is_not(value) | col(User.trust_changed_at).is_(None))
                .values(trusted=value, trust_changed_at=now)
            )
            changed += result.rowcount  # type: ignore[attr-defined]
    return changed
