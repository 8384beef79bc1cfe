"""The wake-up task: a woken worker claims the next claimable work itself, training first."""

import logging
import socket
import time
from typing import Any

from sqlalchemy.engine import Engine

from app.core.db import get_engine
from app.runs import fanout, leases
from app.runs.wakeups import WAKE_TASK, wake_workers
from app.sweeps import execution
from workers import lifetime
from workers.celery_app import celery_app

logger = logging.getLogger(__name__)

# A wake-up keeps claiming for up to this long (an item started before it runs to its end):
# short evaluations then cost no broker round trip each, and the task still ends now and then.
CLAIM_LOOP_SECONDS = 20.0


@celery_app.task(name=WAKE_TASK, bind=True)
def wake(self: Any) -> int:
    """Claim and run the next claimable work until none is left; returns how many items ran.

    The message names nothing: any wake-up will do, and one that finds nothing returns at once.
    """
    return work(self.request.hostname or socket.gethostname())


def work(host: str) -> int:
    """The claim loop: a due run if there is one (its criteria are listed), else a waiting
    criterion of a running run, else a queued evaluation, again and again.

    Training comes first on every turn, so a run posted during a sweep starts as soon as one
    evaluation ends. While more work waits than this loop is taking, it wakes a peer (the
    queue's bound holds: see `wake_workers`), so free workers fill up one wake-up at a time.
    """
    from workers.tasks.sweeps import evaluate_next
    from workers.tasks.training import worker_owner

    engine = get_engine()
    owner = worker_owner(host)
    started = time.monotonic()
    done = 0
    while time.monotonic() - started < CLAIM_LOOP_SECONDS:
        if lifetime.handoff_requested.is_set():
            # This worker is stopping: what is left goes to another one (or to its successor).
            if backlog(engine, limit=1):
                wake_workers(reason="work left by a stopping worker")
            return done
        if backlog(engine, limit=2) > 1:
            wake_workers(reason="work left")
        if not (train_next(engine, owner) or evaluate_next(owner)):
            return done
        done += 1
    # Stopped by the time bound with work maybe left: hand it on, since the wake-ups that
    # brought it may all have been taken. (Not after an error: a failure that repeats would
    # wake worker after worker; run recovery and the scheduler's re-sends wake one later.)
    if backlog(engine, limit=1):
        wake_workers(reason="work left")
    return done


def train_next(engine: Engine, owner: str) -> bool:
    """Take the oldest claimable run (listing its criteria), else train the next waiting
    criterion; False when there is neither (or others took them)."""
    from workers.tasks.training import reads_gpu_queue, take_run, train_criterion

    candidates = leases.claimable_run_ids(engine, gpu=reads_gpu_queue())
    if any(take_run(engine, run_id, owner) != "not claimed" for run_id in candidates):
        return True
    return train_criterion(engine, owner) != "none"


def backlog(engine: Engine, *, limit: int) -> int:
    """Claimable runs, waiting criteria and queued evaluations, counted up to `limit`."""
    from workers.tasks.training import reads_gpu_queue

    gpu = reads_gpu_queue()
    runs = len(leases.claimable_run_ids(engine, limit=limit, gpu=gpu))
    if runs >= limit:
        return runs
    runs += fanout.claimable_count(engine, limit=limit - runs, gpu=gpu)
    if runs >= limit:
        return runs
    return runs + execution.queued_count(engine, limit=limit - runs, gpu=gpu)
