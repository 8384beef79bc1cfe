"""Training task: claim a run by id, execute it, record how it ended. Torch loads in the child."""

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
from app.services import leases
from app.services.wakeups import Wakeup, send_wakeup
from workers import lifetime, metrics
from workers.celery_app import celery_app
from workers.heartbeat import working_on

logger = logging.getLogger(__name__)


@celery_app.task(name="training.train_run", bind=True)
def train_run(self: Any, run_id: int) -> str:
    """Wake-up for run `run_id`: a duplicate or late delivery claims nothing and returns."""
    if lifetime.handoff_requested.is_set():
        # This worker is stopping: leave the run to another one (or to this one's successor).
        send_wakeup(Wakeup(run_id))
        return "worker stopping"
    settings = get_settings()
    engine = get_engine()
    host = self.request.hostname or socket.gethostname()
    owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    claim = leases.claim(
        engine, run_id=run_id, owner=owner, lease_seconds=settings.run_lease_seconds
    )
    if claim is None:
        return "not claimed"
    started = time.monotonic()
    # The run's logs carry the id of the request that queued it.
    with bound(request_id=claim.request_id, run_id=run_id), working_on(run_id=run_id):
        outcome = _run_claimed(engine, claim, settings)
    metrics.run_finished(outcome, time.monotonic() - started)
    return outcome


def _run_claimed(engine: Engine, claim: leases.Claim, settings: Settings) -> str:
    """Train a claimed run to its end; returns how it ended."""
    from ml.licchavi import TrainingCancelled
    from workers.training_run import HandedOff, TrainingExecution

    run_id = claim.run_id
    logger.info("run %s: claimed by %s (attempt %s)", run_id, claim.owner, claim.attempt)
    lifetime.training.set()
    try:
        published = TrainingExecution(engine, claim, settings).run()
    except HandedOff as handed:
        with engine.begin() as connection:
            leases.hand_off(connection, claim)
        send_wakeup(Wakeup(run_id))
        logger.warning("%s; its wake-up is sent again", handed)
        return "handed off"
    except leases.LeaseLost:
        logger.warning("run %s: taken over by another worker; results dropped", run_id)
        return "lease lost"
    except (TrainingCancelled, leases.CancelledBeforePublication):
        with engine.begin() as connection:
            leases.finish(connection, claim, status="cancelled")
        return "cancelled"
    except Exception as exc:
        logger.exception("run %s failed", run_id)
        with engine.begin() as connection:  # the traceback is in the log above
            leases.finish(connection, claim, status="failed", error=public_error(exc))
        return "failed"
    finally:
        lifetime.training.clear()
        lifetime.exit_if_orphaned()  # its worker died: nobody would collect the result
    logger.info("run %s: succeeded; published %s", run_id, ", ".join(published) or "nothing")
    return "succeeded"


@worker_process_init.connect
def _preload_engine(**_: Any) -> None:
    # Importing the engine (pandas, and torch once a run uses CUDA or the converged solver) takes
    # a second or more; doing it in the background of a fresh pool process keeps it off the
    # first run's clock without slowing the process's start (Celery allows it 4 s).
    def load() -> None:
        import ml.licchavi  # noqa: F401

    threading.Thread(target=load, name="preload-engine", daemon=True).start()
