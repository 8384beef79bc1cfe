"""Comparison payloads in Tournesol's shape, and what the API answers about them."""

from datetime import datetime
from typing import Annotated, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from app.api.schemas import CriterionName, UserId, VideoId
from app.core.config import SCORE_MAX_LIMIT, get_settings


class CriterionScore(BaseModel):
    """A score on one criterion: negative prefers video_a, positive video_b."""

    model_config = ConfigDict(extra="forbid")

    criterion: CriterionName
    # Strict: a score is a JSON number, never a string ("5") nor a boolean.
    score_max: float | None = Field(
        default=None, gt=0, le=SCORE_MAX_LIMIT, strict=True, allow_inf_nan=False
    )
    score: float = Field(ge=-SCORE_MAX_LIMIT, le=SCORE_MAX_LIMIT, strict=True, allow_inf_nan=False)

    @field_validator("score")
    @classmethod
    def _score_in_range(cls, score: float, info: ValidationInfo) -> float:
        bound = info.data.get("score_max") or get_settings().score_max
        if abs(score) > bound:
            raise ValueError(f"score must lie in [-{bound:g}, {bound:g}]")
        return score


class ComparisonCreate(BaseModel):
    """What the frontend posts: one pair of videos, scored on one or more criteria."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "alice",
                    "video_a": "yt:dQw4w9WgXcQ",
                    "video_b": "yt:9bZkp7q19f0",
                    "criteria_scores": [{"criterion": "largely_recommended", "score": 6}],
                }
            ]
        },
    )

    user_id: UserId | None = Field(
        default=None,
        description="Whose comparison; may be omitted with a user key or token (it is theirs).",
    )
    video_a: VideoId
    video_b: VideoId
    criteria_scores: list[CriterionScore] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _distinct(self) -> "ComparisonCreate":
        if self.video_a == self.video_b:
            raise ValueError("video_a and video_b must differ")
        names = [cs.criterion for cs in self.criteria_scores]
        if len(names) != len(set(names)):
            raise ValueError("each criterion may appear once in criteria_scores")
        return self


# The same two shapes as plain dicts, for bulk JSON: pydantic checks every field constraint
# without building a model or calling a Python validator per row (those took two thirds of a
# 10,000-row request's validation). `comparison_checks_pass` does what the two validators above
# do; a list with any error goes through the models, whose messages the answer gives.
@with_config(ConfigDict(extra="forbid"))
class CriterionScoreFields(TypedDict):
    criterion: CriterionName
    score_max: NotRequired[
        Annotated[float, Field(gt=0, le=SCORE_MAX_LIMIT, strict=True, allow_inf_nan=False)] | None
    ]
    score: Annotated[
        float, Field(ge=-SCORE_MAX_LIMIT, le=SCORE_MAX_LIMIT, strict=True, allow_inf_nan=False)
    ]


@with_config(ConfigDict(extra="forbid"))
class ComparisonFields(TypedDict):
    user_id: UserId
    video_a: VideoId
    video_b: VideoId
    criteria_scores: Annotated[list[CriterionScoreFields], Field(min_length=1, max_length=64)]


def comparison_checks_pass(comparison: ComparisonFields, default_score_max: float) -> bool:
    """What ComparisonCreate's and CriterionScore's validators check, on validated fields."""
    if comparison["video_a"] == comparison["video_b"]:
        return False
    scores = comparison["criteria_scores"]
    for score in scores:
        if abs(score["score"]) > (score.get("score_max") or default_score_max):
            return False
    return len(scores) == 1 or len({score["criterion"] for score in scores}) == len(scores)


class CriterionScoreResult(BaseModel):
    criterion: str
    score: float
    score_max: float
    status: Literal["created", "updated", "unchanged"]


class ComparisonWriteResult(BaseModel):
    user_id: str
    video_a: str
    video_b: str
    criteria_scores: list[CriterionScoreResult]
    created: int
    updated: int
    unchanged: int


class ComparisonPublic(BaseModel):
    """One stored comparison row (pair in stored, sorted order unless asked otherwise)."""

    user_id: str
    video_a: str
    video_b: str
    criterion: str
    score: float
    score_max: float
    created_at: datetime
    updated_at: datetime


class PairScore(BaseModel):
    criterion: str
    score: float
    score_max: float
    created_at: datetime
    updated_at: datetime


class PairComparison(BaseModel):
    """Every criterion a user scored for one pair, oriented as asked."""

    user_id: str
    video_a: str
    video_b: str
    criteria_scores: list[PairScore]


class BulkResult(BaseModel):
    inserted: int
    updated: int
    unchanged: int
