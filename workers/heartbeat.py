"""Worker heartbeats: every process that takes work (each prefork pool process, or the worker
itself with the solo and threads pools) rewrites its `worker_heartbeats` row every
WORKER_HEARTBEAT_INTERVAL_SECONDS from a thread of its own: host, pid, queues, start time, and
the run or evaluation it is on. `/metrics` turns the rows into heartbeat ages.

A process that stops cleanly deletes its row; a killed one leaves it to age (that is what an
operator must see), until a live writer forgets it after WORKER_HEARTBEAT_RETENTION_SECONDS.
"""

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready
from celery.signals import worker_shutdown as worker_stopping
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite

from app.core.columns import utcnow
from app.core.config import get_settings
from app.core.db import background_engine, without_waiting
from app.models import WorkerHeartbeat
from workers import metrics

logger = logging.getLogger(__name__)

Heartbeat = WorkerHeartbeat.__table__  # type: ignore[attr-defined]
# Least time between two writes, however often the current work changes (short evaluations).
MIN_WRITE_SECONDS = 1.0

# What this process works on now; set while a claimed run or evaluation runs (with the threads
# pool, the latest one claimed).
_current: dict[str, int | None] = {"run": None, "evaluation": None}


class HeartbeatWriter:
    """The thread that keeps one process's row fresh. It has its own engine: a pool process must
    not share connections with its parent, nor the heartbeat wait behind a task's transaction."""

    def __init__(self, node: str, queues: str) -> None:
        settings = get_settings()
        self.engine = background_engine(settings.resolved_database_url)
        self.interval = settings.worker_heartbeat_interval_seconds
        self.retention = timedelta(seconds=settings.worker_heartbeat_retention_seconds)
        self.worker = f"{node}:{os.getpid()}"
        self.identity = {
            "worker": self.worker,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues[:200],
            "started_at": utcnow(),
        }
        self.stopping = threading.Event()
        self.nudged = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def nudge(self) -> None:
        """Write soon: the current work changed."""
        self.nudged.set()

    def beat(self) -> bool:
        """Write the row now; False when it was skipped (SQLite busy) or failed (logged)."""
        now = utcnow()
        values = {
            **self.identity,
            "seen_at": now,
            "current_run_id": _current["run"],
            "current_evaluation_id": _current["evaluation"],
        }
        dialect = self.engine.dialect.name
        insert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Heartbeat)
        changing = {key: value for key, value in values.items() if key != "worker"}
        upsert = insert.values(**values).on_conflict_do_update(
            index_elements=["worker"], set_=changing
        )
        try:
            # A heartbeat never waits for SQLite's write lock: skipped now, written next time.
            with without_waiting(self.engine).begin() as connection:
                connection.execute(upsert)
                connection.execute(
                    delete(Heartbeat).where(Heartbeat.c.seen_at < now - self.retention)
                )
        except Exception as exc:
            busy = "database is locked" in str(exc)
            metrics.heartbeat_written("skipped" if busy else "failed")
            if not busy:
                logger.warning("worker heartbeat not written: %s", exc)
            return False
        metrics.heartbeat_written("written")
        return True

    def stop(self) -> None:
        """Stop the thread and delete the row: a worker that stopped cleanly is not missing."""
        self.stopping.set()
        self.nudged.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        try:
            with without_waiting(self.engine).begin() as connection:
                connection.execute(delete(Heartbeat).where(Heartbeat.c.worker == self.worker))
        except Exception as exc:
            logger.info("worker heartbeat row left to age out: %s", exc)
        self.engine.dispose()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.beat()
            self.stopping.wait(MIN_WRITE_SECONDS)
            self.nudged.wait(max(0.0, self.interval - MIN_WRITE_SECONDS))
            self.nudged.clear()


_writers: list[HeartbeatWriter] = []


@contextlib.contextmanager
def working_on(*, run_id: int | None = None, evaluation_id: int | None = None) -> Iterator[None]:
    """Report a claimed run or evaluation in this process's heartbeat while the block runs."""
    kind, value = ("run", run_id) if run_id is not None else ("evaluation", evaluation_id)
    _current[kind] = value
    for writer in _writers:
        writer.nudge()
    try:
        yield
    finally:
        _current[kind] = None


def _start(node: str) -> None:
    from workers.celery_app import celery_app

    if _writers:
        return
    queues = ",".join(sorted(celery_app.amqp.queues.consume_from or {}))
    writer = HeartbeatWriter(node or f"celery@{socket.gethostname()}", queues)
    writer.start()
    _writers.append(writer)


def _stop() -> None:
    while _writers:
        _writers.pop().stop()


@worker_process_init.connect
def _pool_process_beats(sender: Any = None, **_: Any) -> None:
    # Prefork pool processes, and the worker itself with the solo pool.
    _current.update(run=None, evaluation=None)
    _writers.clear()  # a forked child does not own its parent's writer
    _start(str(sender or ""))


@worker_ready.connect
def _threads_pool_beats(sender: Any = None, **_: Any) -> None:
    # The threads pool runs tasks in the worker's own process and starts no pool process.
    from celery.concurrency.thread import TaskPool as ThreadsPool

    if isinstance(getattr(sender, "pool", None), ThreadsPool):
        _start(str(getattr(sender, "hostname", "") or ""))


@worker_process_shutdown.connect
def _pool_process_stops(**_: Any) -> None:
    _stop()


@worker_stopping.connect
def _worker_stops(**_: Any) -> None:
    _stop()
