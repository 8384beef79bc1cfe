"""Sweeps: their frozen data, trials, evaluations (the unit of work), events and promotions."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.columns import timestamp_field

SWEEP_STATUSES = ("preparing", "running", "paused", "completed", "cancelled", "failed")
SWEEP_ACTIVE = ("preparing", "running", "paused")
TRIAL_STATUSES = ("pending", "running", "succeeded", "pruned", "failed", "cancelled")
TRIAL_SOURCES = ("grid", "sampler", "baseline", "rerun")
# pending: created, not yet handed to workers; queued: claimable; then running → final.
EVALUATION_STATUSES = ("pending", "queued", "running", "succeeded", "failed", "cancelled")
EVALUATION_FINAL = ("succeeded", "failed", "cancelled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Sweep(SQLModel, table=True):
    """A sweep and its resolved spec; the scheduler drives it from `preparing` to an end."""

    __tablename__ = "sweeps"
    __table_args__ = (sa.CheckConstraint(_in("status", SWEEP_STATUSES), name="ck_sweep_status"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    status: str = Field(default="preparing", max_length=16, index=True)
    method: str = Field(max_length=16)
    spec: dict[str, Any] = Field(sa_type=sa.JSON)
    spec_hash: str = Field(max_length=64)
    tags: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    criterion: str = Field(max_length=64)
    objective_metric: str = Field(max_length=64)
    direction: str = Field(max_length=8)
    max_trials: int
    max_parallel: int
    wall_clock_seconds: float | None = None
    units_per_trial: int
    study_name: str | None = Field(default=None, max_length=200)
    data_fingerprint: str | None = Field(default=None, max_length=64)
    split_fingerprint: str | None = Field(default=None, max_length=64)
    code_version: str = Field(max_length=64)
    git_commit: str | None = Field(default=None, max_length=64)
    # The X-Request-ID of the API request that created it: its evaluations' logs carry it.
    request_id: str | None = Field(default=None, max_length=128)
    # The credential that submitted it through the API (`Principal.credential`); a user's
    # credential steers only the sweeps it submitted. None from the CLI or before it was kept.
    caller: str | None = Field(default=None, sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = timestamp_field(index=True)
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class SweepDataset(SQLModel, table=True):
    """Frozen evaluation data: the live comparisons at the start (holdout), or one seed's
    generated comparisons with their truth (synthetic), with the stored split."""

    __tablename__ = "sweep_datasets"
    # One dataset per (sweep, seed), the live comparisons' NULL seed included: a plain unique
    # constraint treats NULLs as distinct, so it is an index over COALESCE (PostgreSQL, SQLite).
    __table_args__ = (
        sa.Index("uq_sweep_dataset_seed", "sweep_id", sa.text("coalesce(seed, -1)"), unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    sweep_id: int = Field(foreign_key="sweeps.id", ondelete="CASCADE")
    seed: int | None = None  # the generator's seed; None for the live comparisons
    payload: bytes = Field(sa_type=sa.LargeBinary)
    fingerprint: str = Field(max_length=64)
    split_fingerprint: str = Field(max_length=64)
    n_comparisons: int
    created_at: datetime = timestamp_field()


class SweepTrial(SQLModel, table=True):
    """One configuration. Its metrics are the means over its succeeded evaluations."""

    __tablename__ = "sweep_trials"
    __table_args__ = (
        sa.CheckConstraint(_in("status", TRIAL_STATUSES), name="ck_sweep_trial_status"),
        sa.UniqueConstraint("sweep_id", "number", name="uq_sweep_trial_number"),
        sa.Index("ix_sweep_trials_sweep_status", "sweep_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sweep_id: int = Field(foreign_key="sweeps.id", ondelete="CASCADE")
    number: int
    status: str = Field(default="pending", max_length=16)
    source: str = Field(max_length=16)
    params: dict[str, Any] = Field(sa_type=sa.JSON)
    config: dict[str, Any] = Field(sa_type=sa.JSON)
    config_hash: str = Field(max_length=64)
    parent_id: int | None = Field(default=None, foreign_key="sweep_trials.id")
    overrides: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    optuna_trial_id: int | None = None
    told_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    objective: float | None = None
    n_succeeded: int = 0
    tags_text: str = Field(default=",", max_length=2000)
    created_at: datetime = timestamp_field()
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class SweepEvaluation(SQLModel, table=True):
    """One (trial, seed, fold): the unit a worker claims, leases, and completes exactly once."""

    __tablename__ = "sweep_evaluations"
    __table_args__ = (
        sa.CheckConstraint(_in("status", EVALUATION_STATUSES), name="ck_sweep_evaluation_status"),
        sa.UniqueConstraint("trial_id", "unit_index", name="uq_sweep_evaluation_unit"),
        sa.Index("ix_sweep_evaluations_status", "status", "id"),
        sa.Index("ix_sweep_evaluations_sweep", "sweep_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sweep_id: int = Field(foreign_key="sweeps.id", ondelete="CASCADE")
    trial_id: int = Field(foreign_key="sweep_trials.id", ondelete="CASCADE")
    unit_index: int
    seed: int
    fold: int
    dataset_id: int | None = Field(default=None, foreign_key="sweep_datasets.id")
    status: str = Field(default="pending", max_length=16)
    attempt: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    heartbeat_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    cancel_requested: bool = False
    wakeup_sent_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    progress: float = 0.0
    metrics: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    history: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    log: str | None = Field(default=None, sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    config_hash: str | None = Field(default=None, max_length=64)
    code_version: str | None = Field(default=None, max_length=64)
    git_commit: str | None = Field(default=None, max_length=64)
    data_fingerprint: str | None = Field(default=None, max_length=64)
    split_fingerprint: str | None = Field(default=None, max_length=64)
    worker: str | None = Field(default=None, max_length=200)
    created_at: datetime = timestamp_field()
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class SweepEvent(SQLModel, table=True):
    """Status history: one row per transition of a sweep, trial or evaluation."""

    __tablename__ = "sweep_events"
    __table_args__ = (sa.Index("ix_sweep_events_sweep", "sweep_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    sweep_id: int = Field(foreign_key="sweeps.id", ondelete="CASCADE")
    trial_id: int | None = None
    evaluation_id: int | None = None
    status: str = Field(max_length=16)
    attempt: int | None = None
    detail: str | None = Field(default=None, max_length=2000)
    at: datetime = timestamp_field()


class SchedulerLease(SQLModel, table=True):
    """Who runs the sweep scheduler: one row, held by one worker process at a time.

    `epoch` is the fencing token: it moves on each time another owner takes the lease, and every
    write of the scheduler checks it in its own transaction, so a holder that lost the lease
    (paused, slow) has its writes refused.
    """

    __tablename__ = "scheduler_leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    epoch: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class TrainingDefaults(SQLModel, table=True):
    """Promoted training settings: the newest row not reverted is the default of every
    production training run; reverting one brings back the one before."""

    __tablename__ = "training_defaults"

    id: int | None = Field(default=None, primary_key=True)
    config: dict[str, Any] = Field(sa_type=sa.JSON)
    config_hash: str = Field(max_length=64)
    sweep_id: int | None = Field(default=None, foreign_key="sweeps.id", ondelete="SET NULL")
    trial_id: int | None = Field(default=None, foreign_key="sweep_trials.id", ondelete="SET NULL")
    note: str | None = Field(default=None, max_length=2000)
    created_at: datetime = timestamp_field()
    reverted_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
