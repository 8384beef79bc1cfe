"""Training work: take a run and list its criteria, train one criterion, record how it ended."""

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy.engine import Engine

from app.core.config import Settings, get_settings
from app.core.db import get_engine
from app.core.errors import public_error
from app.core.logs import bound
from app.runs import fanout, leases
from app.runs.wakeups import GPU_QUEUE, Wakeup, send_wakeup, wake_workers
from workers import lifetime, metrics
from workers.celery_app import celery_app
from workers.heartbeat import working_on

logger = logging.getLogger(__name__)


@celery_app.task(name="training.train_run", bind=True)
def train_run(self: Any, run_id: int) -> str:
    """A wake-up in the form sent before wake-ups were coalesced: take run `run_id` if it is
    claimable, then train its criteria while any waits; returns how the last step ended
    ("succeeded" when this call published the run). A duplicate or late delivery claims nothing
    and returns."""
    engine = get_engine()
    owner = worker_owner(self.request.hostname or socket.gethostname())
    outcome = take_run(engine, run_id, owner)
    if outcome in ("listed", "not claimed"):
        trained = "trained"
        while trained == "trained":
            trained = train_criterion(engine, owner, run_id=run_id)
            outcome = outcome if trained == "none" else trained
    return outcome


def reads_gpu_queue() -> bool:
    """Whether this worker consumes the `gpu` queue (all declared queues, when started without
    a choice): only such a worker trains a run whose settings ask for CUDA."""
    consumed = celery_app.amqp.queues.consume_from or celery_app.amqp.queues
    return GPU_QUEUE in consumed


def worker_owner(host: str) -> str:
    """A lease owner name: host, pool process, and a nonce for this wake-up."""
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take_run(engine: Engine, run_id: int, owner: str) -> str:
    """Claim run `run_id` and list its criteria as claimable rows, waking peers for all but one
    of them; "not claimed" when another worker has it (or it is not claimable).

    A run taken over after its lease expired keeps the criteria it has: listing is done once.
    """
    if lifetime.handoff_requested.is_set():
        # This worker is stopping: leave the run to another one (or to this one's successor).
        send_wakeup(Wakeup(run_id))
        return "worker stopping"
    settings = get_settings()
    claim = leases.claim(
        engine,
        run_id=run_id,
        owner=owner,
        lease_seconds=settings.run_lease_seconds,
        gpu=reads_gpu_queue(),
    )
    if claim is None:
        return "not claimed"
    started = time.monotonic()
    # The run's logs carry the id of the request that queued it.
    with bound(request_id=claim.request_id, run_id=run_id), working_on(run_id=run_id):
        outcome = _list_claimed(engine, claim)
    if outcome != "listed":  # it ended here: failed, lost, or published with nothing to train
        metrics.run_finished(outcome, time.monotonic() - started)
    return outcome


def _list_claimed(engine: Engine, claim: leases.Claim) -> str:
    """List a claimed run's criteria; returns how that ended."""
    from workers.training_run import NothingToTrain, list_run_criteria

    run_id = claim.run_id
    logger.info("run %s: claimed by %s (attempt %s)", run_id, claim.owner, claim.attempt)
    try:
        left, published = list_run_criteria(engine, claim)
    except leases.LeaseLost:
        logger.warning("run %s: taken over before its criteria were listed", run_id)
        return "lease lost"
    except NothingToTrain as nothing:
        # What was asked, not a fault of the service: one line, no traceback. An automatic
        # run whose comparisons were deleted before it started has nothing to do: skipped.
        status = "cancelled" if nothing.skip else "failed"
        error = f"{nothing}: nothing to train, skipped" if nothing.skip else public_error(nothing)
        with engine.begin() as connection:
            leases.finish(connection, claim, status=status, error=error)
        logger.info("run %s: %s (%s)", run_id, status, error)
        return status
    except Exception as exc:
        logger.exception("run %s failed", run_id)
        with engine.begin() as connection:  # the traceback is in the log above
            leases.finish(connection, claim, status="failed", error=public_error(exc))
        return "failed"
    if published is not None:
        logger.info("run %s: succeeded; published %s", run_id, ", ".join(published) or "nothing")
        return "succeeded"
    if left > 1:
        # The criteria are claimed from the table, not sent: a wake-up lets an idle worker
        # take one, and each worker that takes one wakes the next while more wait, within the
        # queue's bound (`wake_workers`).
        wake_workers(wanted=left - 1, reason=f"run {run_id}: {left} criteria")
    return "listed"


def train_criterion(engine: Engine, owner: str, *, run_id: int | None = None) -> str:
    """Claim the next waiting criterion (of `run_id`, or of the oldest running run) and train
    it; "none" when none waits. The worker that finishes a run's last criterion publishes it."""
    if lifetime.handoff_requested.is_set():
        return "none"
    settings = get_settings()
    claim = fanout.claim_next(
        engine,
        owner=owner,
        lease_seconds=settings.run_lease_seconds,
        run_id=run_id,
        gpu=reads_gpu_queue(),
    )
    if claim is None:
        return "none"
    started = time.monotonic()
    # The criterion's logs carry the id of the request that queued its run; the heartbeat
    # names the run.
    with bound(request_id=claim.request_id, run_id=claim.run_id), working_on(run_id=claim.run_id):
        outcome = _train_claimed(engine, claim, settings)
    metrics.run_finished(outcome, time.monotonic() - started)
    return outcome


def _train_claimed(engine: Engine, claim: fanout.CriterionClaim, settings: Settings) -> str:
    """Train a claimed criterion to its end; returns how it ended."""
    from ml.licchavi import TrainingCancelled
    from workers.training_run import CriterionTraining, HandedOff

    label = f"run {claim.run_id}: {claim.criterion}"
    logger.info("%s claimed by %s (attempt %s)", label, claim.owner, claim.attempt)
    lifetime.training.set()
    try:
        published = CriterionTraining(engine, claim, settings).run()
    except HandedOff as handed:
        with engine.begin() as connection:
            fanout.hand_off(connection, claim)
        send_wakeup(Wakeup(claim.run_id))
        logger.warning("%s; its wake-up is sent again", handed)
        return "handed off"
    except leases.LeaseLost as lost:
        logger.warning(
            "run %s: taken over by another worker; %s results dropped (%s)",
            claim.run_id,
            claim.criterion,
            lost,
        )
        return "lease lost"
    except (TrainingCancelled, leases.CancelledBeforePublication):
        with engine.begin() as connection:
            ended = fanout.stop_run(connection, claim, status="cancelled")
        if ended:
            fanout.discard_staged(engine, claim.run_id)
        return "cancelled"
    except Exception as exc:
        return fail_criterion(engine, claim, exc)
    finally:
        lifetime.training.clear()
        lifetime.exit_if_orphaned()  # its worker died: nobody would collect the result
    if published is None:
        logger.info("%s: trained", label)
        return "trained"
    logger.info("run %s: succeeded; published %s", claim.run_id, ", ".join(published) or "nothing")
    return "succeeded"


def fail_criterion(engine: Engine, claim: fanout.CriterionClaim, exc: Exception) -> str:
    """End the run as failed because its criterion raised `exc`, unless another worker took
    the criterion over meanwhile: a worker cut off from the database fails on its next write,
    and when it gets through again its failure is no longer the run's (one warning line, not
    an error with a traceback, for a run that will succeed elsewhere)."""
    try:
        with engine.begin() as connection:
            ours = fanout.holds(connection, claim)
            ended = ours and fanout.stop_run(
                connection, claim, status="failed", error=public_error(exc)
            )
    except Exception:
        # The database is out of reach too: keep the original failure's traceback in the log;
        # the criterion's lease lapses and another attempt takes it.
        logger.error("run %s failed (criterion %s)", claim.run_id, claim.criterion, exc_info=exc)
        raise
    if not ours:
        logger.warning(
            "run %s: taken over by another worker; %s failed here after that (%s)",
            claim.run_id,
            claim.criterion,
            public_error(exc),
        )
        return "lease lost"
    logger.error("run %s failed (criterion %s)", claim.run_id, claim.criterion, exc_info=exc)
    if ended:
        fanout.discard_staged(engine, claim.run_id)
    return "failed"


@worker_process_init.connect
def _preload_engine(**_: Any) -> None:
    # Importing the engine (pandas, and torch once a run uses CUDA or the converged solver) takes
    # a second or more; doing it in the background of a fresh pool process keeps it off the
    # first run's clock without slowing the process's start (Celery allows it 4 s).
    def load() -> None:
        import ml.licchavi  # noqa: F401

    threading.Thread(target=load, name="preload-engine", daemon=True).start()
