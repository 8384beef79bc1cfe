"""Wake-up messages: coalesced, never more than a few undelivered, sent only after commit.

The database rows are the jobs; a message only wakes a worker, which then claims the next
claimable work itself (runs before sweep evaluations). So a wake-up names nothing, any one of
them will do, and none is sent while enough undelivered ones already wait in the queue.
"""

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction

from app.core.columns import utcnow
from app.core.config import get_settings
from app.core.db import get_engine, read_only
from app.core.errors import Conflict
from app.runs.models import WorkerHeartbeat

logger = logging.getLogger(__name__)

PENDING_KEY = "licchavi_pending_wakeups"
WAKE_TASK = "work.wake"
# GPU workers consume this queue (compose's `worker-gpu`: `--queues gpu`). Work is not routed by
# device: any worker claims any due work, so a GPU worker is woken like the others, through the
# queue it reads, and only while one is alive (no message waits where nobody reads).
GPU_QUEUE = "gpu"
# A worker whose heartbeat is older than this many heartbeat intervals is taken as gone.
LIVE_HEARTBEATS = 3
_gpu_consumers: tuple[float, bool] = (-float("inf"), False)
# After a wake-up could not be sent, the next ones are skipped for this long: reaching a broker
# that is down takes seconds (the connection's retries), and every write sends a wake-up. Run
# recovery re-sends what was skipped once the broker is back.
BROKER_DOWN_BACKOFF_SECONDS = 5.0
_broker_down_since: float | None = None
Heartbeat = WorkerHeartbeat.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Wakeup:
    run_id: int
    countdown: float = 0.0


def wake_after_commit(session: OrmSession, *, run_id: int, countdown: float = 0.0) -> None:
    """Wake a worker for `run_id` once `session` commits; forget it if the session rolls back.

    The run row is the record of the job; a worker woken before the row is visible would claim
    nothing, and a message for a rolled-back row would wake a worker for nothing.
    """
    session.info.setdefault(PENDING_KEY, []).append(Wakeup(run_id, countdown))


def send_wakeup(wakeup: Wakeup) -> bool:
    """Wake a worker for a run just recorded; False (logged) when the broker is unreachable.

    A delayed run (an auto run's debounce) gets a message of its own timed for its start: one
    sent now would be taken before the run is due. A lost wake-up is not lost work: the
    workers' run recovery wakes one again for queued runs.
    """
    if wakeup.countdown > 0:
        return wake_workers(countdown=wakeup.countdown, reason=f"run {wakeup.run_id}") >= 0
    return wake_workers(reason=f"run {wakeup.run_id}") >= 0


def wake_workers(
    *,
    wanted: int = 1,
    max_pending: int | None = None,
    countdown: float = 0.0,
    reason: str = "work",
) -> int:
    """Send up to `wanted` wake-ups, leaving at most `max_pending` (WAKEUP_MAX_PENDING)
    undelivered in the queue; returns how many were sent, -1 (logged) when the broker is down.

    Skipping is safe: a wake-up counted as undelivered now is delivered later, and the worker it
    wakes claims from the database, so it sees the work committed before this call. Two
    senders may both see room and both send; the overshoot is one message per sender. A
    delayed wake-up (`countdown`) is always sent: the ones waiting would come too early.
    """
    from app.core.celery_app import celery_app  # the Celery app only; no task module, no torch

    global _broker_down_since
    down_since = _broker_down_since
    if down_since is not None and time.monotonic() - down_since < BROKER_DOWN_BACKOFF_SECONDS:
        logger.debug("wake-up for %s skipped: the broker was unreachable just now", reason)
        return -1
    limit = max_pending or get_settings().wakeup_max_pending
    queues = [celery_app.conf.task_default_queue]
    if gpu_workers_alive():
        queues.append(GPU_QUEUE)
    sent = 0
    try:
        with celery_app.producer_or_acquire() as producer:
            for queue in queues:
                if countdown > 0:
                    sending = 1
                else:
                    waiting = undelivered(producer.channel, queue)
                    sending = max(0, min(wanted, limit - waiting))
                for _ in range(sending):
                    celery_app.send_task(
                        WAKE_TASK,
                        queue=queue,
                        countdown=countdown or None,
                        producer=producer,
                        retry=False,
                    )
                sent += sending
    except Exception as exc:
        _broker_down_since = time.monotonic()
        logger.warning(
            "wake-up for %s not sent (%s); run recovery will, and wake-ups pause for %g s",
            reason,
            exc,
            BROKER_DOWN_BACKOFF_SECONDS,
        )
        return -1
    _broker_down_since = None
    return sent


def forget_gpu_workers() -> None:
    """Read the heartbeats again at the next wake-up, and try the broker again at once
    (settings or workers changed)."""
    global _gpu_consumers, _broker_down_since
    _gpu_consumers = (-float("inf"), False)
    _broker_down_since = None


def gpu_workers_alive() -> bool:
    """Whether a live worker consumes the `gpu` queue, from the workers' heartbeats; read at
    most once per heartbeat interval (a wake-up follows every write), False when unreadable."""
    global _gpu_consumers
    interval = get_settings().worker_heartbeat_interval_seconds
    read_at, alive = _gpu_consumers
    if time.monotonic() - read_at < interval:
        return alive
    since = utcnow() - timedelta(seconds=LIVE_HEARTBEATS * interval)
    try:
        with read_only(get_engine()).connect() as connection:
            rows = connection.execute(
                select(Heartbeat.c.queues).where(Heartbeat.c.seen_at >= since)
            )
            alive = any(GPU_QUEUE in (queues or "").split(",") for (queues,) in rows)
    except Exception as exc:
        logger.warning("worker heartbeats not read (%s): no wake-up for the gpu queue", exc)
        alive = False
    _gpu_consumers = (time.monotonic(), alive)
    return alive


def require_gpu_worker(asker: str) -> None:
    """Refuse (409) work whose settings ask for CUDA while no live worker reads the gpu queue:
    only such a worker takes it, so queued now it would wait for ever. `asker` names it."""
    if not gpu_workers_alive():
        raise Conflict(
            f"{asker} asks for device cuda, and no live worker reads the gpu queue; start one"
            " (docker compose's worker-gpu), or ask for device auto or cpu."
        )


def undelivered(channel: Any, queue: str) -> int:
    """Messages waiting in `queue` and not yet handed to a worker (Redis: the list's length;
    the embedded broker: its visible rows), asked through kombu for either transport."""
    return int(channel.queue_declare(queue=queue, passive=False).message_count)


@event.listens_for(OrmSession, "after_commit")
def _send_pending(session: OrmSession) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released; the transaction itself has not committed yet
    wakeups: list[Wakeup] = session.info.pop(PENDING_KEY, [])
    for delayed in [wakeup for wakeup in wakeups if wakeup.countdown > 0]:
        send_wakeup(delayed)
    # Immediate wake-ups of one transaction are one wake-up: any worker takes every due run.
    now = [wakeup for wakeup in wakeups if wakeup.countdown <= 0]
    if now:
        send_wakeup(now[0])


@event.listens_for(OrmSession, "after_soft_rollback")
def _drop_pending(session: OrmSession, previous_transaction: SessionTransaction) -> None:
    # Only the outermost rollback discards the transaction's rows (a savepoint keeps the rest).
    if previous_transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


def pending(session: OrmSession) -> list[Any]:
    """Wake-ups recorded on `session` and not yet sent."""
    return list(session.info.get(PENDING_KEY, []))
