"""Videos and criteria as the API shows them."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import CriterionName, Text


class VideoPublic(BaseModel):
    video_id: str
    n_comparisons: int
    n_contributors: int
    created_at: datetime


class CriterionPublic(BaseModel):
    name: str
    label: str
    is_main: bool


class CriterionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CriterionName
    label: Text = Field(default="", max_length=200)
