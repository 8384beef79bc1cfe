"""Sweep tasks: evaluate queued units, and the scheduler thread of each worker's main process."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from app.core.config import get_settings
from app.core.db import background_engine, get_engine
from app.services.sweeps import execution
from app.services.sweeps.scheduler import SweepScheduler, release_lease
from workers.celery_app import celery_app

logger = logging.getLogger(__name__)

# A task keeps claiming queued evaluations for up to this long: short trials then cost no
# broker round trip each, while a training run waiting for this process is not held up long.
CLAIM_LOOP_SECONDS = 20.0

_runner: list[Any] = []


def _evaluation_runner() -> Any:
    from workers.sweep_evaluation import EvaluationRunner

    if not _runner:
        _runner.append(EvaluationRunner(get_engine(), get_settings()))
    return _runner[0]


@celery_app.task(name="sweeps.evaluate", bind=True)
def evaluate(self: Any, evaluation_id: int | None = None) -> int:
    """Wake-up for queued evaluations: claims them one by one (the oldest first); returns how
    many it ran. A duplicate or late wake-up finds nothing to claim and returns 0."""
    settings = get_settings()
    engine = get_engine()
    # Load the engine before claiming: a claim starts the lease clock, and importing it in a
    # fresh process can take longer than a short lease.
    runner = _evaluation_runner()
    import ml.sweep.evaluate  # noqa: F401

    host = self.request.hostname or socket.gethostname()
    owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    done = 0
    while time.monotonic() - started < CLAIM_LOOP_SECONDS:
        claim = execution.claim_next(
            engine, owner=owner, lease_seconds=settings.sweep_lease_seconds
        )
        if claim is None:
            break
        outcome = runner.run(claim)
        logger.info("evaluation %s: %s", claim.evaluation_id, outcome)
        done += 1
    return done


def send_evaluation_wakeup(evaluation_id: int) -> bool:
    """Publish a wake-up; False (logged) when the broker is down: the scheduler re-sends."""
    try:
        evaluate.apply_async(args=[evaluation_id], retry=False)
    except Exception as exc:
        logger.warning("wake-up for evaluation %s not sent (%s)", evaluation_id, exc)
        return False
    return True


class SchedulerThread:
    """Runs the sweep scheduler in the worker's main process, while it holds the lease.

    Every worker runs one; the lease row lets exactly one schedule at a time and hands the job
    to another worker when the holder dies. It has its own engine (pool processes are forked
    from this process and must not share its connections).
    """

    def __init__(self) -> None:
        settings = get_settings()
        self.engine = background_engine(settings.resolved_database_url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.scheduler = SweepScheduler(
            self.engine, settings, owner=self.owner, wake=send_evaluation_wakeup
        )
        self.interval = settings.sweep_scheduler_interval_seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sweep-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        try:
            release_lease(self.engine, owner=self.owner)
        except Exception:
            logger.exception("sweep scheduler: could not release the lease")
        self.engine.dispose()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            holding = False
            try:
                holding = self.scheduler.tick()
            except Exception:
                logger.exception("sweep scheduler: pass failed; retrying")
            # A worker without the lease only needs to notice when it frees up.
            self.stopping.wait(self.interval if holding else self.interval * 4)


_scheduler: list[SchedulerThread] = []


@worker_ready.connect
def _start_scheduler(**_: Any) -> None:
    scheduler = SchedulerThread()
    scheduler.start()
    _scheduler.append(scheduler)


@worker_shutdown.connect
def _stop_scheduler(**_: Any) -> None:
    while _scheduler:
        _scheduler.pop().stop()
