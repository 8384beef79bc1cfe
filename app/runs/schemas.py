"""Training runs as the API takes and shows them."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.schemas import CriterionName, JsonSettings

Solver = Literal["faithful", "converged"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RunTrigger = Literal["manual", "auto", "sweep"]


class RunCreate(BaseModel):
    """Start training: every criterion with comparisons unless `criteria` names some."""

    # Strict: a JSON body says what it means ("yes" is not true, "4" is not a number).
    model_config = ConfigDict(extra="forbid", strict=True)

    criteria: list[CriterionName] | None = Field(default=None, min_length=1, max_length=64)
    config: JsonSettings = Field(
        default_factory=dict, description="Overrides of the Licchavi settings (LicchaviConfig)."
    )
    solver: Solver | None = None
    warm_start: bool = Field(
        default=True, description="Start from the published run's state of each criterion."
    )

    @field_validator("criteria")
    @classmethod
    def _distinct(cls, criteria: list[str] | None) -> list[str] | None:
        if criteria is not None and len(set(criteria)) != len(criteria):
            raise ValueError("each criterion may appear once")
        return criteria


CriterionStatus = Literal[
    "queued", "running", "trained", "withdrawn", "skipped", "failed", "cancelled"
]


class RunCriterionPublic(BaseModel):
    """One criterion of a run: claimed and trained by any free worker, in parallel with the
    others; the run publishes them all together once every one is done."""

    criterion: str
    status: CriterionStatus = Field(
        description="trained: its scores wait for the run's publication; withdrawn: no "
        "comparison left, its published scores are replaced by none; skipped: nothing to train."
    )
    progress: float
    epoch: int
    max_epochs: int | None
    attempt: int = Field(description="How many times a worker claimed this criterion.")
    worker: str | None = Field(
        description="The worker training it now, or the one that finished it."
    )
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


class RunPublic(BaseModel):
    id: int
    status: RunStatus
    trigger: RunTrigger
    criteria: list[str] | None
    solver: str
    config: dict[str, Any]
    config_hash: str
    code_version: str
    data_fingerprint: str | None
    n_comparisons: int | None
    n_trusted: int | None = Field(
        default=None,
        description="Trusted users among the contributors of the run's criterion that had the"
        " most of them (0: no trust data, every voting right 1); null until a criterion of the"
        " run has finished.",
    )
    warm_start: bool
    progress: float = Field(description="The mean progress of the run's criteria.")
    epoch: int = Field(description="The epoch of the criterion that reported last.")
    max_epochs: int
    current_criterion: str | None = Field(description="The criterion that reported last.")
    attempt: int
    cancel_requested: bool
    error: str | None
    eta_seconds: float | None = Field(
        default=None, description="Remaining time estimated from progress so far (running only)."
    )
    metrics: dict[str, dict[str, float]] | None = Field(
        default=None, description="Per criterion, the latest value of each loss term."
    )
    criteria_progress: list[RunCriterionPublic] | None = Field(
        default=None,
        description="Each criterion's status, progress and worker, once a worker has listed "
        "the run's criteria (null before).",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class EpochMetrics(BaseModel):
    criterion: str
    epoch: int
    values: dict[str, float]


class RunMetrics(BaseModel):
    run_id: int
    items: list[EpochMetrics]
