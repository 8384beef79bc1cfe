"""User shapes for the admin API: a user as listed, with the operator's trust mark."""

from datetime import datetime

from pydantic import BaseModel, Field


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
