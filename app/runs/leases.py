"""Run leases: a worker owns a running run while its lease is fresh; conditional updates only.

The run's claim lists its criteria (`app.runs.fanout`), which workers then claim one by
one; their renewals keep the run's lease fresh while any of them trains."""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import aliased

from app.models import TrainingRun
from app.runs import lease_rows
from app.runs.lease_rows import claimed_values, held_by

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


def trainable_on(gpu: bool) -> ColumnElement[bool]:
    """Runs a worker may train (`lease_rows.trainable_on` of their settings)."""
    return lease_rows.trainable_on(gpu, Run.c.config)


def _claimable(now: datetime, gpu: bool) -> ColumnElement[bool]:
    """A run a worker may take now: queued, or running under an expired lease; no cancel asked;
    an auto run not while another auto run of its criterion holds a live lease; one this worker
    can train (`trainable_on`)."""
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
        trainable_on(gpu),
    )


def claim(
    engine: Engine, *, run_id: int, owner: str, lease_seconds: float, gpu: bool = True
) -> Claim | None:
    """Take the run if it is queued, or running under an expired lease; None if not ours.

    One conditional UPDATE decides, so of two deliveries of the same wake-up only one claims.
    An auto run also waits while another auto run of its criterion holds a live lease.
    """
    now = now_utc()
    statement = (
        update(Run)
        .where(Run.c.id == run_id, _claimable(now, gpu))
        .values(
            **claimed_values(Run, owner=owner, lease_seconds=lease_seconds, now=now),
            started_at=func.coalesce(Run.c.started_at, now),
        )
        .returning(Run.c.attempt, Run.c.request_id)
    )
    with engine.begin() as connection:
        row = connection.execute(statement).one_or_none()
    if row is None:
        return None
    return Claim(run_id=run_id, owner=owner, attempt=int(row.attempt), request_id=row.request_id)


def claimable_run_ids(engine: Engine, *, limit: int = 8, gpu: bool = True) -> list[int]:
    """Ids of runs a woken worker may claim now, oldest first: claimable (as in `claim`) and,
    when queued, due.

    Only a hint: `claim` decides, so two workers trying the same id claim it once.
    """
    now = now_utc()
    # A delayed run (an auto run's debounce) is not due before its time.
    due = or_(Run.c.status != "queued", Run.c.not_before <= now)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Run.c.id).where(_claimable(now, gpu), due).order_by(Run.c.id).limit(limit)
        ).all()
    return [int(row[0]) for row in rows]


def _owned(claim: Claim) -> ColumnElement[bool]:
    return held_by(Run, claim.run_id, claim.owner, claim.attempt)


class CancelledBeforePublication(Exception):
    """A cancel arrived after the last epoch but before the scores were published."""


def finish(connection: Connection, claim: Claim, *, status: str, error: str | None = None) -> bool:
    """Move our run to a final status (its criteria could not be listed); False when it is no
    longer ours (nothing written)."""
    values: dict[str, object] = {
        "status": status,
        "finished_at": now_utc(),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if error is not None:
        values["error"] = error[:10_000]
    result = connection.execute(update(Run).where(_owned(claim)).values(**values))
    return bool(result.rowcount)
