"""API keys: only a peppered hash is stored; the key itself is shown once at creation."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.columns import timestamp_field


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16, unique=True, index=True)
    key_hash: str = Field(max_length=64)
    scopes: str = Field(default="", max_length=500, description="Space-separated scopes.")
    user_id: str | None = Field(
        default=None,
        max_length=150,
        index=True,
        description="External id of the user a user key acts for; None: a service key.",
    )
    created_at: datetime = timestamp_field()
    expires_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    # Written at most once a minute per key, so a busy key costs no write per request.
    last_used_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    revoked_at: datetime | None = Field(
        default=None,
        sa_type=sa.DateTime(timezone=True),
    )
