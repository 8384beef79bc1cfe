"""Evaluations from a worker's side: claim, heartbeat, complete — each one conditional UPDATE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from app.models import Sweep, SweepEvaluation, SweepEvent, SweepTrial
from app.runs.lease_rows import claimed_values, held_by, trainable_on

Evaluation = SweepEvaluation.__table__  # type: ignore[attr-defined]
Trial = SweepTrial.__table__  # type: ignore[attr-defined]
Event = SweepEvent.__table__  # type: ignore[attr-defined]
SweepTable = Sweep.__table__  # type: ignore[attr-defined]


class EvaluationLost(Exception):
    """The evaluation is no longer ours (lease expired and reclaimed, or cancelled)."""


@dataclass(frozen=True)
class EvaluationClaim:
    evaluation_id: int
    owner: str
    attempt: int
    sweep_id: int
    trial_id: int
    unit_index: int
    seed: int
    fold: int
    dataset_id: int
    config: dict[str, Any]
    # The request that created the sweep: the worker logs the evaluation under the same id.
    request_id: str | None = None


def now_utc() -> datetime:
    return datetime.now(UTC)


def record_event(
    connection: Connection,
    *,
    sweep_id: int,
    status: str,
    trial_id: int | None = None,
    evaluation_id: int | None = None,
    attempt: int | None = None,
    detail: str | None = None,
) -> None:
    connection.execute(
        insert(Event).values(
            sweep_id=sweep_id,
            trial_id=trial_id,
            evaluation_id=evaluation_id,
            status=status,
            attempt=attempt,
            detail=None if detail is None else detail[:2000],
            at=now_utc(),
        )
    )


def _waiting(gpu: bool) -> Select[tuple[int]]:
    """Queued evaluations a worker may run: on a worker that does not read the gpu queue, none
    of a trial whose settings ask for CUDA (`trainable_on`)."""
    waiting = select(Evaluation.c.id).where(Evaluation.c.status == "queued")
    if gpu:
        return waiting  # the index range scan alone
    return waiting.where(
        exists().where(Trial.c.id == Evaluation.c.trial_id, trainable_on(False, Trial.c.config))
    )


def queued_count(engine: Engine, *, limit: int, gpu: bool = True) -> int:
    """How many evaluations wait for a worker that reads the gpu queue (`gpu`) or not, counted
    up to `limit`."""
    with engine.connect() as connection:
        waiting = _waiting(gpu).limit(limit).subquery()
        return int(connection.execute(select(func.count()).select_from(waiting)).scalar_one())


def claim_next(
    engine: Engine, *, owner: str, lease_seconds: float, gpu: bool = True
) -> EvaluationClaim | None:
    """Take the oldest queued evaluation this worker may run (`gpu`: it reads the gpu queue);
    None when there is none.

    On PostgreSQL the candidate row is locked with SKIP LOCKED, so concurrent workers each take
    a different row without waiting; on SQLite the write transaction serialises them. The
    status test in the UPDATE itself makes a claim of an already-taken row claim nothing.
    """
    now = now_utc()
    candidate = (
        _waiting(gpu)
        .order_by(Evaluation.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(Evaluation)
        .where(Evaluation.c.id == candidate, Evaluation.c.status == "queued")
        .values(
            **claimed_values(Evaluation, owner=owner, lease_seconds=lease_seconds, now=now),
            started_at=now,
            worker=owner,
            progress=0.0,
        )
        .returning(
            Evaluation.c.id,
            Evaluation.c.attempt,
            Evaluation.c.sweep_id,
            Evaluation.c.trial_id,
            Evaluation.c.unit_index,
            Evaluation.c.seed,
            Evaluation.c.fold,
            Evaluation.c.dataset_id,
        )
    )
    with engine.begin() as connection:
        row = connection.execute(statement).one_or_none()
        if row is None:
            return None
        config = connection.execute(
            select(Trial.c.config).where(Trial.c.id == row.trial_id)
        ).scalar_one()
        request_id = connection.execute(
            select(SweepTable.c.request_id).where(SweepTable.c.id == row.sweep_id)
        ).scalar()
        record_event(
            connection,
            sweep_id=row.sweep_id,
            trial_id=row.trial_id,
            evaluation_id=row.id,
            status="running",
            attempt=row.attempt,
            detail=owner,
        )
    return EvaluationClaim(
        evaluation_id=int(row.id),
        owner=owner,
        attempt=int(row.attempt),
        sweep_id=int(row.sweep_id),
        trial_id=int(row.trial_id),
        unit_index=int(row.unit_index),
        seed=int(row.seed),
        fold=int(row.fold),
        dataset_id=int(row.dataset_id),
        config=dict(config),
        request_id=request_id,
    )


def _owned(claim: EvaluationClaim) -> ColumnElement[bool]:
    return held_by(Evaluation, claim.evaluation_id, claim.owner, claim.attempt)


def heartbeat(
    engine: Engine, claim: EvaluationClaim, *, lease_seconds: float, progress: float
) -> bool:
    """Extend the lease and write progress; returns whether a cancel was asked.

    Raises EvaluationLost when the evaluation is no longer ours.
    """
    now = now_utc()
    with engine.begin() as connection:
        cancel = connection.execute(
            update(Evaluation)
            .where(_owned(claim))
            .values(
                heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                progress=progress,
            )
            .returning(Evaluation.c.cancel_requested)
        ).scalar()
    if cancel is None:
        raise EvaluationLost(f"evaluation {claim.evaluation_id}: lease lost")
    return bool(cancel)


def hand_back(engine: Engine, claim: EvaluationClaim) -> bool:
    """Give an evaluation up at once (its worker is stopping): queued again now, for any worker
    to claim as its next attempt, instead of after its lease expires. False when it was no longer
    ours (nothing written)."""
    now = now_utc()
    with engine.begin() as connection:
        result = connection.execute(
            update(Evaluation)
            .where(_owned(claim))
            .values(
                status="queued",
                lease_owner=None,
                lease_expires_at=None,
                progress=0.0,
                wakeup_sent_at=now,
            )
        )
        if not result.rowcount:
            return False
        _record_claim_event(connection, claim, "queued", "handed back: worker stopping")
    return True


def finish(
    engine: Engine,
    claim: EvaluationClaim,
    *,
    status: str,
    values: dict[str, Any],
    detail: str | None = None,
) -> bool:
    """Record how the evaluation ended, in one transaction checked against our attempt.

    False (nothing written) when another attempt owns it now: its result is the one kept, so
    every evaluation has exactly one result however often it was started.
    """
    with engine.begin() as connection:
        result = connection.execute(
            update(Evaluation)
            .where(_owned(claim))
            .values(
                status=status,
                finished_at=now_utc(),
                lease_owner=None,
                lease_expires_at=None,
                progress=1.0 if status == "succeeded" else Evaluation.c.progress,
                **values,
            )
        )
        if not result.rowcount:
            return False
        _record_claim_event(connection, claim, status, detail)
    return True


def _record_claim_event(
    connection: Connection, claim: EvaluationClaim, status: str, detail: str | None
) -> None:
    record_event(
        connection,
        sweep_id=claim.sweep_id,
        trial_id=claim.trial_id,
        evaluation_id=claim.evaluation_id,
        status=status,
        attempt=claim.attempt,
        detail=detail,
    )
