"""Wake-up messages: coalesced, never more than a few undelivered, sent only after commit.

The database rows are the jobs; a message only wakes a worker, which then claims the next
claimable work itself (runs before sweep evaluations). So a wake-up names nothing, any one of
them will do, and none is sent while enough undelivered ones already wait in the queue.
"""

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction

from app.core.config import get_settings

logger = logging.getLogger(__name__)

PENDING_KEY = "licchavi_pending_wakeups"
WAKE_TASK = "work.wake"


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
    from workers.celery_app import celery_app  # the Celery app only; no task module, no torch

    limit = max_pending or get_settings().wakeup_max_pending
    queue = celery_app.conf.task_default_queue
    try:
        with celery_app.producer_or_acquire() as producer:
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
    except Exception as exc:
        logger.warning("wake-up for %s not sent (%s); run recovery will", reason, exc)
        return -1
    return sending


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
