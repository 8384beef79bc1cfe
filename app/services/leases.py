"""Run leases: a worker owns a running run while its lease is fresh; conditional updates only."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import aliased

from app.models import TrainingRun

Run = TrainingRun.__table__  # type: ignore[attr-defined]


class LeaseLost(Exception):
    """Another worker took the run over (our lease expired); stop without writing results."""


@dataclass(frozen=True)
class Claim:
    run_id: int
    owner: str
    attempt: int
    # The request that queued the run: the worker logs its training under the same id.
    request_id: str | None = None


def now_utc() -> datetime:
    return datetime.now(UTC)


def _claimable(now: datetime) -> ColumnElement[bool]:
    """A run a worker may take now: queued, or running under an expired lease; no cancel asked;
    an auto run not while another auto run of its criterion holds a live lease."""
    other = aliased(Run)
    busy_sibling = exists().where(
        other.c.scope == Run.c.scope,
        other.c.trigger == "auto",
        other.c.status == "running",
        other.c.id != Run.c.id,
        other.c.lease_expires_at >= now,
    )
    return and_(
        Run.c.cancel_requested.is_(False),
        or_(
            Run.c.status == "queued",
            and_(Run.c.status == "running", Run.c.lease_expires_at < now),
        ),
        or_(Run.c.trigger != "auto", ~busy_sibling),
    )


def claim(engine: Engine, *, run_id: int, owner: str, lease_seconds: float) -> Claim | None:
    """Take the run if it is queued, or running under an expired lease; None if not ours.

    One conditional UPDATE decides, so of two deliveries of the same wake-up only one claims.
    An auto run also waits while another auto run of its criterion holds a live lease.
    """
    now = now_utc()
    statement = (
        update(Run)
        .where(Run.c.id == run_id, _claimable(now))
        .values(
            status="running",
            attempt=Run.c.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=func.coalesce(Run.c.started_at, now),
        )
        .returning(Run.c.attempt, Run.c.request_id)
    )
    with engine.begin() as connection:
        row = connection.execute(statement).one_or_none()
    if row is None:
        return None
    return Claim(run_id=run_id, owner=owner, attempt=int(row.attempt), request_id=row.request_id)


def claimable_run_ids(engine: Engine, *, limit: int = 8) -> list[int]:
    """Ids of runs a woken worker may claim now, oldest first: claimable (as in `claim`) and,
    when queued, due.

    Only a hint: `claim` decides, so two workers trying the same id claim it once.
    """
    now = now_utc()
    # A delayed run (an auto run's debounce) is not due before its time.
    due = or_(Run.c.status != "queued", Run.c.not_before <= now)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Run.c.id).where(_claimable(now), due).order_by(Run.c.id).limit(limit)
        ).all()
    return [int(row[0]) for row in rows]


def renew(
    connection: Connection,
    claim: Claim,
    *,
    lease_seconds: float,
    progress: float,
    epoch: int,
    criterion: str | None,
    max_epochs: int | None = None,
) -> bool:
    """Write progress and extend the lease; returns whether a cancel was asked.

    max_epochs, when given, replaces the estimate made when the run was queued: the trainer
    knows the real count once training starts (a warm start runs only the schedule's last
    epochs). Raises LeaseLost when the run is no longer ours.
    """
    now = now_utc()
    values: dict[str, object] = {
        "progress": progress,
        "epoch": epoch,
        "current_criterion": criterion,
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
    }
    if max_epochs is not None:
        values["max_epochs"] = max_epochs
    cancel = connection.execute(
        update(Run).where(_owned(claim)).values(**values).returning(Run.c.cancel_requested)
    ).scalar()
    if cancel is None:
        raise LeaseLost(f"run {claim.run_id}: lease lost")
    return bool(cancel)


def extend(connection: Connection, claim: Claim, *, lease_seconds: float) -> None:
    """Extend the lease, and hold the run's row until the transaction ends, so that whatever
    else the transaction writes is written by the run's owner only (on PostgreSQL a takeover's
    claim waits for it, then finds the lease fresh). Raises LeaseLost when the run is no longer
    ours."""
    now = now_utc()
    result = connection.execute(
        update(Run)
        .where(_owned(claim))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    if not result.rowcount:
        raise LeaseLost(f"run {claim.run_id}: lease lost")


def _owned(claim: Claim) -> ColumnElement[bool]:
    return and_(
        Run.c.id == claim.run_id, Run.c.status == "running", Run.c.lease_owner == claim.owner
    )


def record_snapshot(
    connection: Connection,
    claim: Claim,
    *,
    fingerprint: str,
    n_comparisons: int,
    at: datetime,
    n_trusted: int = 0,
) -> None:
    result = connection.execute(
        update(Run)
        .where(_owned(claim))
        .values(
            data_fingerprint=fingerprint,
            n_comparisons=n_comparisons,
            snapshot_at=at,
            n_trusted=n_trusted,
        )
    )
    if not result.rowcount:
        raise LeaseLost(f"run {claim.run_id}: lease lost")


def hand_off(connection: Connection, claim: Claim) -> bool:
    """Give our run up at once (the worker is stopping): its lease ends now, so the next wake-up's
    claim takes it over and resumes from its checkpoint instead of waiting for the lease to
    expire. The run stays `running` until then, which keeps an auto run's one-queued-per-scope
    rule intact. False when the run was no longer ours."""
    result = connection.execute(
        update(Run).where(_owned(claim)).values(lease_owner=None, lease_expires_at=now_utc())
    )
    return bool(result.rowcount)


class CancelledBeforePublication(Exception):
    """A cancel arrived after the last epoch but before the scores were published."""


def finish(
    connection: Connection,
    claim: Claim,
    *,
    status: str,
    error: str | None = None,
    unless_cancelled: bool = False,
) -> bool:
    """Move our run to a final status; False when it is no longer ours (nothing written).

    With `unless_cancelled`, a run whose cancel was asked is not moved, and
    CancelledBeforePublication is raised: a cancel either stops the run or is refused (409),
    never acknowledged and then ignored.
    """
    values: dict[str, object] = {
        "status": status,
        "finished_at": now_utc(),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if status == "succeeded":
        values["progress"] = 1.0
    if error is not None:
        values["error"] = error[:10_000]
    condition = _owned(claim)
    if unless_cancelled:
        condition = and_(condition, Run.c.cancel_requested.is_(False))
    result = connection.execute(update(Run).where(condition).values(**values))
    if not result.rowcount and unless_cancelled:
        asked = connection.execute(select(Run.c.cancel_requested).where(_owned(claim))).scalar()
        if asked:
            raise CancelledBeforePublication(f"run {claim.run_id}: cancelled before publication")
    return bool(result.rowcount)
