"""Sweep work: run the next queued evaluation, and the scheduler thread of each worker's main
process."""

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
from app.core.db import background_engine, get_engine, log_background_failure
from app.core.logs import bound
from app.runs.wakeups import wake_workers
from app.sweeps import execution
from app.sweeps.scheduler import SweepScheduler, release_lease
from workers import lifetime, metrics
from workers.celery_app import celery_app
from workers.heartbeat import working_on

logger = logging.getLogger(__name__)

_runner: list[Any] = []


def _evaluation_runner() -> Any:
    from workers.sweep_evaluation import EvaluationRunner

    if not _runner:
        _runner.append(EvaluationRunner(get_engine(), get_settings()))
    return _runner[0]


def evaluate_next(owner: str) -> bool:
    """Claim and run the oldest queued evaluation; False when none is queued."""
    settings = get_settings()
    engine = get_engine()
    if lifetime.handoff_requested.is_set():
        return False  # this worker is stopping: the evaluation is for another one
    from workers.tasks.training import reads_gpu_queue

    # A worker that does not read the gpu queue leaves evaluations that ask for CUDA alone.
    gpu = reads_gpu_queue()
    if not execution.queued_count(engine, limit=1, gpu=gpu):
        return False  # no sweep work: the sweep engine need not even be loaded
    # Load the engine before claiming: a claim starts the lease clock, and importing it in a
    # fresh process can take longer than a short lease.
    runner = _evaluation_runner()
    import ml.sweep.evaluate  # noqa: F401

    claim = execution.claim_next(
        engine, owner=owner, lease_seconds=settings.sweep_lease_seconds, gpu=gpu
    )
    if claim is None:
        return False
    started = time.monotonic()
    # The evaluation's logs carry the id of the request that created its sweep.
    with (
        bound(
            request_id=claim.request_id,
            sweep_id=claim.sweep_id,
            evaluation_id=claim.evaluation_id,
        ),
        working_on(evaluation_id=claim.evaluation_id),
    ):
        outcome = runner.run(claim)
        logger.info("evaluation %s: %s", claim.evaluation_id, outcome)
    metrics.evaluation_finished(outcome, time.monotonic() - started)
    return True


@celery_app.task(name="sweeps.evaluate", bind=True)
def evaluate(self: Any, evaluation_id: int | None = None) -> int:
    """A wake-up in the form sent before wake-ups were coalesced: handled as `work.wake`."""
    from workers.tasks.work import work

    return work(self.request.hostname or socket.gethostname())


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
        self._wanted: list[int] = []  # evaluations a pass queued; woken for once, after it
        self.scheduler = SweepScheduler(
            self.engine, settings, owner=self.owner, wake=self._wanted.append
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
        except Exception as exc:
            log_background_failure(
                logger,
                "sweep scheduler: could not release the lease",
                exc,
                then="another worker takes over once it lapses",
            )
        self.engine.dispose()

    def _wake_workers(self) -> None:
        """However many evaluations a pass queued, at most the queue's room in wake-ups: each
        worker woken wakes the next while evaluations are left (`workers.tasks.work`)."""
        if self._wanted:
            wake_workers(wanted=len(self._wanted), reason=f"{len(self._wanted)} evaluation(s)")
            self._wanted.clear()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            holding = False
            try:
                holding = self.scheduler.tick()
            except Exception as exc:
                log_background_failure(logger, "sweep scheduler: pass failed", exc, then="retrying")
            self._wake_workers()
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
