"""Housekeeping tasks."""

import os
import socket

from sqlmodel import Session

from app.core.db import get_engine
from app.models import WorkerHeartbeat
from app.models.base import utcnow
from workers.celery_app import celery_app


@celery_app.task(name="maintenance.heartbeat")
def heartbeat() -> None:
    """Record that this worker took a task: proves broker → worker → database end to end."""
    worker = heartbeat.request.hostname or f"celery@{socket.gethostname()}"
    with Session(get_engine()) as session:
        row = session.get(WorkerHeartbeat, worker) or WorkerHeartbeat(
            worker=worker, pid=os.getpid()
        )
        row.pid = os.getpid()
        row.seen_at = utcnow()
        session.add(row)
        session.commit()
