"""Identity shapes for the admin API: what is asked to create an API key, what is shown of one,
and a user as listed, with the operator's trust mark."""

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from app.api.schemas import Line, UserId
from app.identity.service import bounded_expiry


class ApiKeyCreate(BaseModel):
    """A new key: a service key, or with `user_id` a user key holding user scopes only."""

    model_config = ConfigDict(extra="forbid")

    name: Line = Field(default="api", min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=16)
    user_id: UserId | None = Field(default=None, description="Bind the key to this user.")
    expires_at: AwareDatetime | None = None
    expires_in: str | None = Field(
        default=None, max_length=40, description="Instead of expires_at: `30d`, `12h`, `2w`."
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> "ApiKeyCreate":
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        if self.expires_at is not None:
            self.expires_at = bounded_expiry(self.expires_at)
        return self


class ApiKeyPublic(BaseModel):
    """A key as listed: never the key itself, only its prefix."""

    id: int
    prefix: str
    name: str
    scopes: list[str]
    user_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    status: Literal["active", "expired", "revoked"]


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself, shown this once: only its hash is stored.")


class UserPublic(BaseModel):
    """A contributor and whether an operator trusts them."""

    user_id: str = Field(description="The platform's external id (Tournesol's public username).")
    trusted: bool = Field(
        description="Trusted users have a full voting right on every video they compared; the"
        " untrusted contributors of a video share a capped one."
    )
    trust_changed_at: datetime | None = Field(
        description="When the mark was last set or removed; null: never."
    )
    created_at: datetime
