"""Housekeeping: run recovery, which re-wakes stalled or unsent runs."""

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.engine import Engine

from app.core.config import get_settings
from app.core.db import background_engine, get_engine, log_background_failure
from app.runs import publication
from app.runs.recovery import prune_superseded_scores, runs_to_wake
from app.runs.wakeups import wake_workers
from workers.celery_app import celery_app

logger = logging.getLogger(__name__)


def wake_stalled_runs(engine: Engine) -> int:
    """Wake a worker for runs whose worker died or whose message was lost (returns how many
    runs), and delete the scores of superseded runs and the checkpoints a publication left."""
    settings = get_settings()
    with engine.begin() as connection:
        run_ids = runs_to_wake(connection, resend_after_seconds=settings.run_resend_after_seconds)
    if run_ids:
        # One wake-up for all of them, and none while one still waits in the queue: the worker
        # it wakes claims every claimable run in turn, so copies would only pile up behind it.
        wake_workers(max_pending=1, reason=f"stalled run(s) {run_ids}")
    pruned = prune_superseded_scores(engine, runs_kept=settings.score_runs_kept)
    if pruned:
        logger.info("run recovery: scores of superseded run(s) %s deleted", pruned)
    delete_skipped_checkpoints(engine)
    return len(run_ids)


def delete_skipped_checkpoints(engine: Engine) -> None:
    """Delete the checkpoints a publication skipped, held then by a cut-off worker's open
    transaction. Only PostgreSQL has row locks to skip (on SQLite the publication deletes them
    all); read first, so that a pass with nothing to delete writes nothing."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as connection:
        left = publication.published_checkpoints_left(connection)
    if left:
        with engine.begin() as connection:
            deleted = publication.delete_checkpoints(connection)
        logger.info("run recovery: %d checkpoint(s) of published runs deleted", deleted)


@celery_app.task(name="maintenance.recover_runs")
def recover_runs() -> int:
    """Run recovery as a task, for deployments that prefer Celery beat to the in-worker loop."""
    return wake_stalled_runs(get_engine())


class RunRecoveryLoop:
    """A daemon thread in the worker's main process that recovers runs every few seconds.

    A loop in the worker rather than Celery beat: the embedded default then needs no extra
    process, and recovery runs even while the broker is down (it is what re-sends the wake-ups
    once the broker is back). Several workers recovering send at most one wake-up each, and only
    while none waits in the queue. The thread has its own engine: pool processes are forked
    from this process, and they must never share the process-wide engine's connections.
    """

    def __init__(self) -> None:
        settings = get_settings()
        self.engine = background_engine(settings.resolved_database_url)
        self.interval = settings.run_recovery_interval_seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="run-recovery", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.engine.dispose()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                woken = wake_stalled_runs(self.engine)
                if woken:
                    logger.info("run recovery: %s run(s) woken again", woken)
            except Exception as exc:
                log_background_failure(logger, "run recovery: pass failed", exc, then="retrying")
            self.stopping.wait(self.interval)


_recovery_loops: list[RunRecoveryLoop] = []


@worker_ready.connect
def _start_run_recovery(**_: Any) -> None:
    loop = RunRecoveryLoop()
    loop.start()
    _recovery_loops.append(loop)


@worker_shutdown.connect
def _stop_run_recovery(**_: Any) -> None:
    while _recovery_loops:
        _recovery_loops.pop().stop()
