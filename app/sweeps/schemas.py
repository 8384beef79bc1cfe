"""Sweeps, trials and promotions as the API shows them."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import JsonSettings, Text
from ml.sweep.spec import MAX_GRID_TRIALS, MAX_PARALLEL, MAX_WALL_CLOCK_SECONDS

SweepStatus = Literal["preparing", "running", "paused", "completed", "cancelled", "failed"]
TrialStatus = Literal["pending", "running", "succeeded", "pruned", "failed", "cancelled"]


class SweepBudget(BaseModel):
    max_trials: int
    max_parallel: int
    wall_clock_seconds: float | None


class SweepProgress(BaseModel):
    trials: dict[str, int] = Field(description="trials by status")
    evaluations: dict[str, int] = Field(description="evaluations (trial × seed × fold) by status")
    best: dict[str, Any] | None = Field(description="the best succeeded trial so far")


class SweepPublic(BaseModel):
    id: int
    name: str
    status: SweepStatus
    method: str
    criterion: str
    objective_metric: str
    direction: str
    budget: SweepBudget
    units_per_trial: int
    tags: list[str]
    spec: dict[str, Any] = Field(description="the spec with every default resolved")
    spec_hash: str
    study_name: str | None
    data_fingerprint: str | None
    split_fingerprint: str | None
    code_version: str
    git_commit: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: SweepProgress | None = None


class SweepBudgetUpdate(BaseModel):
    """Change the budget of a live sweep (a completed one with room left runs on)."""

    # The spec's bounds: a budget changed later is held to what a submission may ask. Strict:
    # a JSON body says what it means ("4" is not a number).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    max_trials: int | None = Field(default=None, ge=1, le=MAX_GRID_TRIALS)
    max_parallel: int | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    wall_clock_seconds: float | None = Field(
        default=None, gt=0, le=MAX_WALL_CLOCK_SECONDS, description="at most a year"
    )


class TrialPublic(BaseModel):
    id: int
    sweep_id: int
    number: int
    status: TrialStatus
    source: str
    params: dict[str, Any]
    config_hash: str
    parent_id: int | None
    overrides: dict[str, Any] | None
    metrics: dict[str, Any] = Field(description="means over the trial's succeeded evaluations")
    objective: float | None
    n_succeeded: int
    tags: list[str]
    created_at: datetime
    finished_at: datetime | None


class TrialRerun(BaseModel):
    """Run a trial again with some settings changed; the new trial links to it."""

    model_config = ConfigDict(extra="forbid")

    overrides: JsonSettings = Field(default_factory=dict)


class RetryResult(BaseModel):
    retried_evaluations: int


class PromotionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trial_id: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="default: the best succeeded trial"
    )
    note: Text | None = Field(default=None, max_length=2000)


class TrainingDefaultsPublic(BaseModel):
    id: int
    config: dict[str, Any]
    config_hash: str
    sweep_id: int | None
    trial_id: int | None
    note: str | None
    created_at: datetime
    reverted_at: datetime | None
    active: bool
