"""A run's criteria as claimable work: listed once, claimed, renewed, handed off, published."""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from app.models import TrainingRun, TrainingRunCriterion
from app.runs import publication
from app.runs.lease_rows import claimed_values, held_by
from app.runs.leases import (
    CancelledBeforePublication,
    Claim,
    LeaseLost,
    now_utc,
    trainable_on,
)
from app.runs.models import CRITERION_DONE

Run = TrainingRun.__table__  # type: ignore[attr-defined]
Item = TrainingRunCriterion.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CriterionClaim:
    """A worker's hold on one criterion of a run, fenced by its owner and attempt."""

    item_id: int
    run_id: int
    criterion: str
    owner: str
    attempt: int
    # The request that queued the run: the worker logs the criterion's training under it.
    request_id: str | None = None


def list_criteria(
    connection: Connection,
    claim: Claim,
    *,
    names: list[str],
    withdrawn: list[str],
    snapshot_at: datetime,
) -> tuple[int, list[str] | None]:
    """Record the run's criteria as claimable rows, once; returns (criteria left to train,
    the criteria published when there was nothing to train, else None).

    `snapshot_at` becomes the run's snapshot time: every criterion loads its comparisons
    later, so it trains on at least what was committed then, and publication compares runs
    by it (an older run never replaces fresher scores). Raises LeaseLost when the run is no
    longer ours.
    """
    marked = connection.execute(
        update(Run)
        .where(
            Run.c.id == claim.run_id,
            Run.c.status == "running",
            Run.c.lease_owner == claim.owner,
        )
        .values(snapshot_at=func.coalesce(Run.c.snapshot_at, snapshot_at))
    )
    if not marked.rowcount:
        raise LeaseLost(f"run {claim.run_id}: lease lost")
    existing = connection.execute(
        select(func.count()).select_from(Item).where(Item.c.run_id == claim.run_id)
    ).scalar_one()
    if not existing:
        now = now_utc()
        rows = [
            {"criterion": name, "status": "queued", "progress": 0.0, "finished_at": None}
            for name in names
        ] + [
            {"criterion": name, "status": "withdrawn", "progress": 1.0, "finished_at": now}
            for name in withdrawn
        ]
        connection.execute(
            insert(Item),
            [
                {**row, "run_id": claim.run_id, "position": position, "attempt": 0, "epoch": 0}
                for position, row in enumerate(rows)
            ],
        )
    left = int(
        connection.execute(
            select(func.count())
            .select_from(Item)
            .where(Item.c.run_id == claim.run_id, Item.c.status.not_in(CRITERION_DONE))
        ).scalar_one()
    )
    return left, (None if left else publish_if_done(connection, claim.run_id))


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        Item.c.status == "queued",
        and_(Item.c.status == "running", Item.c.lease_expires_at < now),
    )


def _run_takes_work() -> ColumnElement[bool]:
    return and_(Run.c.status == "running", Run.c.cancel_requested.is_(False))


def claim_next(
    engine: Engine,
    *,
    owner: str,
    lease_seconds: float,
    run_id: int | None = None,
    gpu: bool = True,
) -> CriterionClaim | None:
    """Take the next criterion waiting in a running run (of `run_id`, or the oldest run);
    None when none waits.

    A criterion waits when queued, or running under an expired lease (its worker died or
    handed it off). On PostgreSQL the candidate row is locked with SKIP LOCKED, so concurrent
    workers each take a different one without waiting; on SQLite the write gate serialises
    them. The conditions are tested again by the UPDATE, so a taken row is never taken twice.
    The run's lease is renewed by the criterion's first renewal (it takes the run's row lock,
    which a claim does not: see `_lock_run`).
    """
    now = now_utc()
    conditions = [_claimable(now), _run_takes_work(), trainable_on(gpu)]
    if run_id is not None:
        conditions.append(Item.c.run_id == run_id)
    candidate = (
        select(Item.c.id)
        .join(Run, Run.c.id == Item.c.run_id)
        .where(*conditions)
        .order_by(Item.c.run_id, Item.c.position)
        .limit(1)
        .with_for_update(skip_locked=True, of=Item)
        .scalar_subquery()
    )
    statement = (
        update(Item)
        .where(Item.c.id == candidate, _claimable(now))
        .values(
            **claimed_values(Item, owner=owner, lease_seconds=lease_seconds, now=now),
            started_at=now,
            error=None,
        )
        .returning(Item.c.id, Item.c.run_id, Item.c.criterion, Item.c.attempt)
    )
    with engine.begin() as connection:
        row = connection.execute(statement).one_or_none()
        if row is None:
            return None
        request_id = connection.execute(
            select(Run.c.request_id).where(Run.c.id == row.run_id)
        ).scalar()
    return CriterionClaim(
        item_id=int(row.id),
        run_id=int(row.run_id),
        criterion=str(row.criterion),
        owner=owner,
        attempt=int(row.attempt),
        request_id=request_id,
    )


def claimable_count(engine: Engine, *, limit: int, gpu: bool = True) -> int:
    """Criteria waiting for a worker (one that reads the `gpu` queue, or not) in running runs,
    counted up to `limit`."""
    now = now_utc()
    with engine.connect() as connection:
        waiting = (
            select(Item.c.id)
            .join(Run, Run.c.id == Item.c.run_id)
            .where(_claimable(now), _run_takes_work(), trainable_on(gpu))
            .limit(limit)
            .subquery()
        )
        return int(connection.execute(select(func.count()).select_from(waiting)).scalar_one())


def _owned(claim: CriterionClaim) -> ColumnElement[bool]:
    return held_by(Item, claim.item_id, claim.owner, claim.attempt)


def renew(
    connection: Connection,
    claim: CriterionClaim,
    *,
    lease_seconds: float,
    progress: float,
    epoch: int,
    max_epochs: int | None,
) -> bool:
    """Write the criterion's progress, extend its lease and the run's, and aggregate the run's
    progress (the mean over its criteria); returns whether a cancel was asked.

    The run's `epoch`, `max_epochs` and `current_criterion` show the criterion that reported
    last. Raises LeaseLost when the criterion is no longer ours or the run has ended (failed or
    cancelled through another criterion).
    """
    now = now_utc()
    expires = now + timedelta(seconds=lease_seconds)
    values: dict[str, object] = {
        "progress": progress,
        "epoch": epoch,
        "heartbeat_at": now,
        "lease_expires_at": expires,
    }
    if max_epochs is not None:
        values["max_epochs"] = max_epochs
    if not _lock_run_and_update(connection, claim, values):
        raise LeaseLost(f"run {claim.run_id}: {claim.criterion} lease lost")
    run_values: dict[str, object] = {
        "progress": _run_progress(connection, claim.run_id),
        "epoch": epoch,
        "current_criterion": claim.criterion,
        "heartbeat_at": now,
        "lease_expires_at": expires,
    }
    if max_epochs is not None:
        run_values["max_epochs"] = max_epochs
    cancel = connection.execute(
        update(Run)
        .where(Run.c.id == claim.run_id, Run.c.status == "running")
        .values(**run_values)
        .returning(Run.c.cancel_requested)
    ).scalar()
    if cancel is None:
        raise LeaseLost(f"run {claim.run_id}: ended while {claim.criterion} trained")
    return bool(cancel)


def extend(connection: Connection, claim: CriterionClaim, *, lease_seconds: float) -> None:
    """Extend the criterion's lease and the run's, holding both rows until the transaction
    ends, so that whatever else the transaction writes (a batch of staged scores) is written by
    the criterion's owner only: on PostgreSQL a claim of the criterion waits for it, then finds
    the lease fresh. Raises LeaseLost when the criterion is no longer ours or the run ended,
    CancelledBeforePublication when a cancel was asked (nothing more is worth staging)."""
    now = now_utc()
    expires = now + timedelta(seconds=lease_seconds)
    mine = _lock_run_and_update(
        connection, claim, {"heartbeat_at": now, "lease_expires_at": expires}
    )
    # The run's lease too, reading its cancel flag; nothing of this stays if a check below fails
    # (the exception rolls the transaction back).
    cancel = connection.execute(
        update(Run)
        .where(Run.c.id == claim.run_id, Run.c.status == "running")
        .values(heartbeat_at=now, lease_expires_at=expires)
        .returning(Run.c.cancel_requested)
    ).scalar()
    if cancel is None:
        run_status, _ = _lock_run(connection, claim.run_id)
        raise LeaseLost(f"run {claim.run_id} is {run_status}")
    if cancel:
        raise CancelledBeforePublication(f"run {claim.run_id}: cancelled before publication")
    if not mine:
        raise LeaseLost(f"run {claim.run_id}: {claim.criterion} lease lost")


def stage(
    engine: Engine,
    claim: CriterionClaim,
    output: publication.CriterionOutput,
    *,
    lease_seconds: float,
) -> None:
    """Stage the criterion's final state and scores under the run's id in short transactions
    (`publication.stage`), each fenced by the criterion's lease; a retaken criterion first
    deletes what its earlier attempt staged. Then `finish` records it, writing no score."""

    def fence(connection: Connection) -> None:
        extend(connection, claim, lease_seconds=lease_seconds)

    publication.stage(engine, claim.run_id, output, fence=fence, clear_first=claim.attempt > 1)


def _run_progress(connection: Connection, run_id: int) -> float:
    """The mean progress of the run's criteria, a finished one counting 1."""
    rows = connection.execute(
        select(Item.c.status, Item.c.progress).where(Item.c.run_id == run_id)
    ).all()
    if not rows:
        return 0.0
    return sum(1.0 if status in CRITERION_DONE else float(p) for status, p in rows) / len(rows)


def hand_off(connection: Connection, claim: CriterionClaim) -> bool:
    """Give the criterion up at once (the worker is stopping) and end the run's lease too, so
    the next wake-up takes the run and this criterion over without waiting for either lease to
    expire. False when the criterion was no longer ours."""
    now = now_utc()
    _lock_run(connection, claim.run_id)
    released = connection.execute(
        update(Item).where(_owned(claim)).values(lease_owner=None, lease_expires_at=now)
    ).rowcount
    if released:
        connection.execute(
            update(Run)
            .where(Run.c.id == claim.run_id, Run.c.status == "running")
            .values(lease_owner=None, lease_expires_at=now)
        )
    return bool(released)


def _lock_run(connection: Connection, run_id: int) -> tuple[str, bool]:
    """The run's status and cancel flag, its row locked until the transaction ends (SQLite's
    write transaction already excludes every other writer), so two criteria finishing at once
    cannot both see the other unfinished, and only one publishes.

    Every transaction that writes both a run and its criteria takes this lock before either,
    so they all lock in one order (run, then criteria) and cannot deadlock: ending a run cancels
    its other criteria while their workers renew them. A claim locks one criterion and no run.
    It is `FOR NO KEY UPDATE` on PostgreSQL, which the key-share locks of inserts referencing
    the run (metrics, checkpoints, written earlier in a renewal's transaction) do not block:
    `FOR UPDATE` would, and two renewals, each holding its inserts' key-share lock, would wait
    for each other.
    """
    row = connection.execute(
        select(Run.c.status, Run.c.cancel_requested)
        .where(Run.c.id == run_id)
        .with_for_update(key_share=True)
    ).one()
    return str(row.status), bool(row.cancel_requested)


def _lock_run_and_update(
    connection: Connection, claim: CriterionClaim, values: dict[str, object]
) -> bool:
    """Lock the run's row (as `_lock_run`), then write `values` to the criterion if it is still
    ours; returns whether it was.

    One statement on PostgreSQL (the run's lock is its sub-select, taken before the criterion's
    row): a worker cut off from the network between two statements would leave the run locked
    and the criterion free until the server drops its connection (up to 20 s), and the worker
    taking the criterion over would then wait that long to renew its lease. Within one
    statement, the server holds both locks or neither.
    """
    if connection.dialect.name != "postgresql":
        _lock_run(connection, claim.run_id)  # SQLite: the write transaction excludes the rest
        return bool(connection.execute(update(Item).where(_owned(claim)).values(**values)).rowcount)
    locked_run = (
        select(Run.c.id)
        .where(Run.c.id == claim.run_id)
        .with_for_update(key_share=True)
        .scalar_subquery()
    )
    statement = update(Item).where(_owned(claim), Item.c.run_id == locked_run).values(**values)
    return bool(connection.execute(statement).rowcount)


def finish(
    connection: Connection,
    claim: CriterionClaim,
    *,
    status: str = "trained",
    data_fingerprint: str | None = None,
    n_comparisons: int | None = None,
    n_trusted: int | None = None,
) -> list[str] | None:
    """Record the criterion as done, its scores already staged under the run's id (`stage`); if
    it was the last one, publish the run. Returns the criteria published, or None while others
    remain.

    Call inside one transaction, which writes no score. Staged scores are not served: readers
    follow the published pointers, which only the publication moves, for every criterion at
    once. `n_trusted` (trusted contributors to the criterion) raises the run's to it: a run
    records the most of any of its criteria. Raises LeaseLost when the criterion or the run is
    no longer ours to finish, CancelledBeforePublication when a cancel was asked.
    """
    run_status, cancel = _lock_run(connection, claim.run_id)
    if run_status != "running":
        raise LeaseLost(f"run {claim.run_id} is {run_status}")
    if cancel:
        raise CancelledBeforePublication(f"run {claim.run_id}: cancelled before publication")
    done = connection.execute(
        update(Item)
        .where(_owned(claim))
        .values(
            status=status,
            progress=1.0,
            finished_at=now_utc(),
            trained_by=claim.owner,
            lease_owner=None,
            lease_expires_at=None,
            data_fingerprint=data_fingerprint,
            n_comparisons=n_comparisons,
        )
    ).rowcount
    if not done:
        raise LeaseLost(f"run {claim.run_id}: {claim.criterion} lease lost before it finished")
    if n_trusted is not None:
        connection.execute(
            update(Run)
            .where(
                Run.c.id == claim.run_id,
                or_(Run.c.n_trusted.is_(None), Run.c.n_trusted < n_trusted),
            )
            .values(n_trusted=n_trusted)
        )
    return publish_if_done(connection, claim.run_id)


def publish_if_done(connection: Connection, run_id: int) -> list[str] | None:
    """Publish the run if every criterion is done: move every criterion's published pointer
    and mark the run succeeded, in the caller's transaction (after `_lock_run`). Returns the
    criteria published, None while a criterion is left."""
    items = connection.execute(
        select(Item.c.criterion, Item.c.status, Item.c.data_fingerprint, Item.c.n_comparisons)
        .where(Item.c.run_id == run_id)
        .order_by(Item.c.position)
    ).all()
    if any(item.status not in CRITERION_DONE for item in items):
        return None
    trained = [item for item in items if item.status == "trained"]
    digest = hashlib.sha256()
    for item in sorted(trained, key=lambda item: item.criterion):
        digest.update(f"{item.criterion}:{item.data_fingerprint}\n".encode())
    now = now_utc()
    moved = connection.execute(
        update(Run)
        .where(Run.c.id == run_id, Run.c.status == "running", Run.c.cancel_requested.is_(False))
        .values(
            status="succeeded",
            finished_at=now,
            progress=1.0,
            lease_owner=None,
            lease_expires_at=None,
            data_fingerprint=digest.hexdigest(),
            n_comparisons=sum(item.n_comparisons or 0 for item in trained),
        )
        .returning(Run.c.snapshot_at)
    ).one_or_none()
    if moved is None:
        status, cancel = connection.execute(
            select(Run.c.status, Run.c.cancel_requested).where(Run.c.id == run_id)
        ).one()
        if status == "running" and cancel:
            raise CancelledBeforePublication(f"run {run_id}: cancelled before publication")
        raise LeaseLost(f"run {run_id} is {status}")
    snapshot_at = publication.aware(moved.snapshot_at or now)
    ids: dict[str, int] = dict(
        connection.execute(text("SELECT name, id FROM criteria")).tuples().all()
    )
    published = [
        item.criterion
        for item in items
        if item.status in ("trained", "withdrawn")
        and publication.move_pointer(connection, run_id, ids[item.criterion], snapshot_at)
    ]
    publication.delete_checkpoints(connection, run_id=run_id)
    return published


def holds(connection: Connection, claim: CriterionClaim) -> bool:
    """Whether the criterion is still this claim's (no other worker took it over)."""
    return connection.execute(select(Item.c.id).where(_owned(claim))).first() is not None


def stop_run(
    connection: Connection, claim: CriterionClaim, *, status: str, error: str | None = None
) -> bool:
    """End the whole run as `status` (failed or cancelled) because of this criterion: nothing
    is published, and the other criteria stop at their next renewal (or staging batch). The
    caller then deletes what the run staged (`discard_staged`, in batches, after this commits).
    False (nothing written) when the criterion was no longer ours."""
    now = now_utc()
    _lock_run(connection, claim.run_id)
    mine = connection.execute(
        update(Item)
        .where(_owned(claim))
        .values(
            status="failed" if status == "failed" else "cancelled",
            error=None if error is None else error[:10_000],
            finished_at=now,
            trained_by=claim.owner,
            lease_owner=None,
            lease_expires_at=None,
        )
    ).rowcount
    if not mine:
        return False
    values: dict[str, object] = {
        "status": status,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if error is not None:
        values["error"] = f"{claim.criterion}: {error}"[:10_000]
    ended = connection.execute(
        update(Run).where(Run.c.id == claim.run_id, Run.c.status == "running").values(**values)
    ).rowcount
    if ended:
        end_criteria(connection, claim.run_id)
    return bool(ended)


def end_criteria(connection: Connection, run_id: int) -> None:
    """Cancel the criteria of an ended run that were still waiting or training. What the run
    staged was never published; `discard_staged` or `prune_superseded_scores` delete it in
    batches, not in this transaction (on SQLite it holds the only write lock)."""
    connection.execute(
        update(Item)
        .where(Item.c.run_id == run_id, Item.c.status.in_(("queued", "running")))
        .values(status="cancelled", lease_owner=None, lease_expires_at=None)
    )


def discard_staged(engine: Engine, run_id: int) -> int:
    """Delete the scores an ended (failed or cancelled) run staged, in batches of
    `publication.score_batch_rows`; returns the rows deleted. No criterion stages more once the
    run has ended (each batch's fence sees it), so none is left after; `prune_superseded_scores`
    does the same for a run whose worker died before it could."""
    deleted = 0
    for table in ("local_scores", "global_scores"):
        deleted += publication.delete_in_batches(
            engine,
            table,
            "run_id = :run",
            {"run": run_id},
            batch_rows=publication.score_batch_rows(engine),
        )
    return deleted


def criteria_of(connection: Connection, run_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The criteria rows of these runs, in their order, by run."""
    found: dict[int, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return found
    rows = connection.execute(
        select(Item).where(Item.c.run_id.in_(run_ids)).order_by(Item.c.run_id, Item.c.position)
    ).mappings()
    for row in rows:
        found[int(row["run_id"])].append(dict(row))
    return found
