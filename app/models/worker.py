"""Worker heartbeats: which Celery workers have recently taken work from the broker."""

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.models.base import timestamp_field


class WorkerHeartbeat(SQLModel, table=True):
    __tablename__ = "worker_heartbeats"

    worker: str = Field(primary_key=True, max_length=200)
    pid: int
    seen_at: datetime = timestamp_field()
