"""The entities comparisons refer to: users (contributors), videos and criteria."""

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.models.base import timestamp_field


class User(SQLModel, table=True):
    """A contributor, known by the platform's external id (Tournesol's public username)."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=150, unique=True, index=True)
    created_at: datetime = timestamp_field()


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
