"""Column helpers shared by the tables: timezone-aware UTC timestamps."""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp_field(**kwargs: Any) -> Any:
    """A non-null timezone-aware timestamp column defaulting to now."""
    return Field(
        default_factory=utcnow,
        sa_type=sa.DateTime(timezone=True),
        nullable=False,
        **kwargs,
    )
