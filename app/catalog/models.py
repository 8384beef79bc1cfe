"""The entities comparisons refer to: users (contributors), videos and criteria."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.columns import timestamp_field


class User(SQLModel, table=True):
    """A contributor, known by the platform's external id (Tournesol's public username).

    `trusted` is an operator's mark: a trusted user's voting right on every video is 1, while
    the untrusted contributors of a video share a capped one (ml/licchavi/voting_rights.py).
    """

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=150, unique=True, index=True)
    created_at: datetime = timestamp_field()
    trusted: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # When the current mark was set (trusted or untrusted); None: never marked.
    trust_changed_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class Video(SQLModel, table=True):
    """A compared entity, known by its external id such as `yt:dQw4w9WgXcQ`."""

    __tablename__ = "videos"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=100, unique=True, index=True)
    created_at: datetime = timestamp_field()


class Criterion(SQLModel, table=True):
    """A quality videos are compared on; each criterion is scored independently."""

    __tablename__ = "criteria"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    label: str = Field(default="", max_length=200)
    is_main: bool = Field(default=False)
    created_at: datetime = timestamp_field()
