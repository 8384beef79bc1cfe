"""Training runs and what they produce: metrics, saved states, scores, and the published pointer;
and the heartbeats of the worker processes that train them."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.columns import timestamp_field

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
RUN_TRIGGERS = ("manual", "auto", "sweep")
ACTIVE_STATUSES = ("queued", "running")


class TrainingRun(SQLModel, table=True):
    """A training job. The row is the record of the job; a Celery message only wakes a worker.

    `scope` is the comma-joined sorted criteria names ("" for every criterion), so "one queued
    auto run per criterion" is a partial unique index rather than a query on a JSON list.
    """

    __tablename__ = "training_runs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="ck_training_run_status",
        ),
        sa.CheckConstraint(
            "trigger IN ('manual', 'auto', 'sweep')", name="ck_training_run_trigger"
        ),
        sa.Index(
            "uq_training_runs_one_queued_auto",
            "scope",
            unique=True,
            postgresql_where=sa.text("status = 'queued' AND trigger = 'auto'"),
            sqlite_where=sa.text("status = 'queued' AND trigger = 'auto'"),
        ),
        # An Idempotency-Key is the caller's own: another caller's same key is another request.
        sa.Index(
            "uq_training_runs_caller_idempotency_key", "caller", "idempotency_key", unique=True
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default="queued", max_length=16, index=True)
    trigger: str = Field(default="manual", max_length=16)
    criteria: list[str] | None = Field(default=None, sa_type=sa.JSON)
    scope: str = Field(default="", max_length=1000)
    solver: str = Field(max_length=32)
    config: dict[str, Any] = Field(sa_type=sa.JSON)
    config_hash: str = Field(max_length=64)
    code_version: str = Field(max_length=64)
    data_fingerprint: str | None = Field(default=None, max_length=64)
    n_comparisons: int | None = None
    # Trusted users among the contributors of the trained criteria (0: no trust data, every
    # voting right 1); None until the snapshot is taken.
    n_trusted: int | None = None
    snapshot_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    progress: float = 0.0
    epoch: int = 0
    max_epochs: int = 0
    current_criterion: str | None = Field(default=None, max_length=64)
    attempt: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    heartbeat_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    cancel_requested: bool = False
    error: str | None = Field(default=None, sa_type=sa.Text)
    # The credential that asked for it through the API (`Principal.credential`: `key:<id>` or
    # `jwt:<issuer>:<user>`); None for runs queued otherwise (auto training, sweeps, the CLI) or
    # stored before callers were recorded.
    caller: str | None = Field(default=None, sa_type=sa.Text)
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str | None = Field(default=None, max_length=64)
    # The X-Request-ID of the API request that queued it: its worker logs carry it too.
    request_id: str | None = Field(default=None, max_length=128)
    warm_start: bool = True
    not_before: datetime = timestamp_field()
    wakeup_sent_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    created_at: datetime = timestamp_field(index=True)
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


CRITERION_STATUSES = (
    "queued",
    "running",
    "trained",
    "withdrawn",
    "skipped",
    "failed",
    "cancelled",
)
# A criterion in one of these needs no more work; the run publishes once all are.
CRITERION_DONE = ("trained", "withdrawn", "skipped")


class TrainingRunCriterion(SQLModel, table=True):
    """One criterion of a run: the unit that workers claim, train and checkpoint.

    The worker that claims a run only lists its criteria here; any free worker then claims a
    criterion with a lease of its own, as runs are claimed, so a run's criteria train in
    parallel. `trained` holds its scores staged under the run's id (unpublished, so unread);
    the worker that finishes the last one publishes them all in one transaction. `withdrawn`:
    the criterion has no comparisons left but has published scores, which the run replaces by
    none; `skipped`: neither (an auto run leaves it alone).
    """

    __tablename__ = "training_run_criteria"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'trained', 'withdrawn', 'skipped', 'failed',"
            " 'cancelled')",
            name="ck_training_run_criterion_status",
        ),
        sa.UniqueConstraint("run_id", "criterion", name="uq_training_run_criterion"),
        sa.Index("ix_training_run_criteria_status", "status", "run_id", "position"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_runs.id", ondelete="CASCADE")
    criterion: str = Field(max_length=64)
    position: int = 0
    status: str = Field(default="queued", max_length=16)
    attempt: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    heartbeat_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    trained_by: str | None = Field(default=None, max_length=200)
    progress: float = 0.0
    epoch: int = 0
    max_epochs: int | None = None
    data_fingerprint: str | None = Field(default=None, max_length=64)
    n_comparisons: int | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class TrainingMetric(SQLModel, table=True):
    """One loss term of one epoch; written in batches while a run trains."""

    __tablename__ = "training_metrics"
    __table_args__ = (sa.Index("ix_training_metrics_run_epoch", "run_id", "criterion", "epoch"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_runs.id", ondelete="CASCADE")
    criterion: str = Field(max_length=64)
    epoch: int
    name: str = Field(max_length=32)
    value: float
    attempt: int = 1


class ModelState(SQLModel, table=True):
    """A serialised LicchaviState: a mid-run checkpoint, or the final state of a criterion."""

    __tablename__ = "model_states"
    __table_args__ = (sa.Index("ix_model_states_run_criterion", "run_id", "criterion"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_runs.id", ondelete="CASCADE")
    criterion: str = Field(max_length=64)
    epoch: int
    is_checkpoint: bool
    state: bytes = Field(sa_type=sa.LargeBinary)
    sha256: str = Field(max_length=64)
    created_at: datetime = timestamp_field()


# The score tables carry no foreign keys on purpose: a run writes up to millions of rows with
# COPY, and a foreign-key trigger per row would cost more than the copy itself. Runs are never
# deleted while their scores are kept, and ids come from the same transaction's snapshot.


class GlobalScore(SQLModel, table=True):
    __tablename__ = "global_scores"
    __table_args__ = (
        sa.Index("ix_global_scores_ranking", "run_id", "criterion_id", "score", "video_id"),
    )

    run_id: int = Field(primary_key=True)
    criterion_id: int = Field(primary_key=True)
    video_id: int = Field(primary_key=True)
    score: float
    uncertainty: float
    n_comparisons: int
    n_contributors: int


class LocalScore(SQLModel, table=True):
    __tablename__ = "local_scores"

    run_id: int = Field(primary_key=True)
    criterion_id: int = Field(primary_key=True)
    user_id: int = Field(primary_key=True)
    video_id: int = Field(primary_key=True)
    score: float
    uncertainty: float


class PublishedRun(SQLModel, table=True):
    """Which run's scores `GET /scores` serves, per criterion; moved with the scores' insert."""

    __tablename__ = "published_runs"

    criterion_id: int = Field(primary_key=True, foreign_key="criteria.id", ondelete="CASCADE")
    run_id: int = Field(foreign_key="training_runs.id")
    published_at: datetime = timestamp_field()


class WorkerHeartbeat(SQLModel, table=True):
    """`worker` is "<Celery node name>:<pid>": unique across hosts that share a host name (network
    namespaces, containers started alike) and across restarts of one worker."""

    __tablename__ = "worker_heartbeats"

    worker: str = Field(primary_key=True, max_length=200)
    hostname: str | None = Field(default=None, max_length=200)
    pid: int
    queues: str | None = Field(default=None, max_length=200)
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    # When it last reported in (its "last seen").
    seen_at: datetime = timestamp_field()
    current_run_id: int | None = None
    current_evaluation_id: int | None = None
