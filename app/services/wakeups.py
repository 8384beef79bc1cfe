"""Wake-up messages for training runs, sent only once the transaction that recorded them commits."""

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction

logger = logging.getLogger(__name__)

PENDING_KEY = "licchavi_pending_wakeups"


@dataclass(frozen=True)
class Wakeup:
    run_id: int
    countdown: float = 0.0


def wake_after_commit(session: OrmSession, *, run_id: int, countdown: float = 0.0) -> None:
    """Send `train_run(run_id)` once `session` commits; forget it if the session rolls back.

    The run row is the record of the job; a worker woken before the row is visible would claim
    nothing, and a message for a rolled-back row would wake a worker for nothing.
    """
    session.info.setdefault(PENDING_KEY, []).append(Wakeup(run_id, countdown))


def send_wakeup(wakeup: Wakeup) -> bool:
    """Publish one wake-up; False (logged) when the broker is unreachable.

    A lost wake-up is not lost work: the workers' run recovery re-sends wake-ups for queued runs.
    """
    from workers.tasks.training import train_run

    try:
        train_run.apply_async(args=[wakeup.run_id], countdown=wakeup.countdown or None, retry=False)
    except Exception as exc:
        logger.warning("wake-up for run %s not sent (%s); run recovery will", wakeup.run_id, exc)
        return False
    return True


@event.listens_for(OrmSession, "after_commit")
def _send_pending(session: OrmSession) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released; the transaction itself has not committed yet
    for wakeup in session.info.pop(PENDING_KEY, []):
        send_wakeup(wakeup)


@event.listens_for(OrmSession, "after_soft_rollback")
def _drop_pending(session: OrmSession, previous_transaction: SessionTransaction) -> None:
    # Only the outermost rollback discards the transaction's rows (a savepoint keeps the rest).
    if previous_transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


def pending(session: OrmSession) -> list[Any]:
    """Wake-ups recorded on `session` and not yet sent."""
    return list(session.info.get(PENDING_KEY, []))
