"""Worker heartbeats: one row per worker process that takes work, rewritten every few seconds."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.models.base import timestamp_field


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
