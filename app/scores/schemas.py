"""Global and individual scores as the API shows them."""

from pydantic import BaseModel, Field

from app.api.schemas import Page


class GlobalScorePublic(BaseModel):
    video_id: str
    criterion: str
    score: float = Field(description="Licchavi's global score ρ (roughly in [-2, 2]).")
    display_score: float = Field(description="100·x/sqrt(1+x²): the score squashed to [-100, 100].")
    uncertainty: float
    n_comparisons: int
    n_contributors: int
    run_id: int


class ScorePage(Page[GlobalScorePublic]):
    criterion: str
    run_id: int | None = Field(description="The run every item comes from (null: none yet).")


class VideoScores(BaseModel):
    video_id: str
    scores: list[GlobalScorePublic]


class LocalScorePublic(BaseModel):
    video_id: str
    criterion: str
    score: float
    uncertainty: float
    run_id: int


class UserScores(Page[LocalScorePublic]):
    user_id: str
