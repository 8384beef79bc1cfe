"""Runs that need another wake-up: expired leases (crashed workers), queued runs never started."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from app.core.db import read_only
from app.models import TrainingRun, TrainingRunCriterion
from app.runs.fanout import end_criteria
from app.runs.publication import delete_in_batches, score_batch_rows

Run = TrainingRun.__table__  # type: ignore[attr-defined]
Item = TrainingRunCriterion.__table__  # type: ignore[attr-defined]


def runs_to_wake(connection: Connection, *, resend_after_seconds: float) -> list[int]:
    """Ids of runs a worker should be woken for, each marked as woken now.

    - running with an expired lease: its worker died; the next claim takes it over;
    - queued and due for longer than `resend_after_seconds`: its message may have been lost
      (broker down when the run was created, or restarted without persistence);
    - running with a criterion waiting: queued, or under an expired lease (its worker died
      while another criterion of the run keeps the run's lease fresh); idle workers take it.
    A run is re-sent at most once per `resend_after_seconds`. A run whose cancellation was asked
    and whose workers died is cancelled here, since no worker will claim it.
    """
    now = datetime.now(UTC)
    due = now - timedelta(seconds=resend_after_seconds)
    expired = and_(Run.c.status == "running", Run.c.lease_expires_at < now)
    abandoned = [
        int(row[0])
        for row in connection.execute(
            update(Run)
            .where(expired, Run.c.cancel_requested.is_(True))
            .values(status="cancelled", finished_at=now, lease_owner=None, lease_expires_at=None)
            .returning(Run.c.id)
        ).all()
    ]
    for run_id in abandoned:
        end_criteria(connection, run_id)
    waiting = exists().where(
        Item.c.run_id == Run.c.id,
        or_(
            Item.c.status == "queued",
            and_(Item.c.status == "running", Item.c.lease_expires_at < now),
        ),
    )
    not_recently_sent = or_(Run.c.wakeup_sent_at.is_(None), Run.c.wakeup_sent_at < due)
    ids = [
        int(row[0])
        for row in connection.execute(
            select(Run.c.id)
            .where(
                not_recently_sent,
                or_(
                    expired,
                    and_(Run.c.status == "queued", Run.c.not_before < due),
                    and_(Run.c.status == "running", Run.c.cancel_requested.is_(False), waiting),
                ),
            )
            .order_by(Run.c.id)
        ).all()
    ]
    if ids:
        connection.execute(update(Run).where(Run.c.id.in_(ids)).values(wakeup_sent_at=now))
    return ids


def prune_superseded_scores(engine: Engine, *, runs_kept: int) -> list[int]:
    """Delete the score rows of succeeded runs that are neither published nor among the
    `runs_kept` newest succeeded runs, and those a failed or cancelled run stored before it
    ended; returns the runs pruned.

    Every run writes a score per (user, video) pair it trained on, so without this the score
    tables would grow by the size of the dataset at every auto run. Rows go in batches of
    `score_batch_rows`, each its own transaction (on SQLite each holds the only write lock);
    a run once found superseded stays so (pointers only ever move to the run publishing), and
    each batch checks again that no pointer names it. Reads by run id answer 410 for a
    superseded run from the moment it is found so (`is_superseded`), not only once its rows
    are gone, so none reads a half-deleted run.
    """
    # One statement, so one snapshot: read in separate statements, a run published between them
    # looked neither newest nor published and lost its scores.
    with read_only(engine).connect() as connection:
        run_ids = [
            int(row[0])
            for row in connection.execute(
                text(
                    "SELECT r.id FROM training_runs r WHERE ((r.status = 'succeeded'"
                    f" AND {_SUPERSEDED}) OR r.status IN ('failed', 'cancelled'))"
                    " AND (EXISTS (SELECT 1 FROM global_scores g WHERE g.run_id = r.id)"
                    " OR EXISTS (SELECT 1 FROM local_scores l WHERE l.run_id = r.id))"
                ),
                {"kept": runs_kept},
            ).all()
        ]
    batch = score_batch_rows(engine)
    for run_id in run_ids:

        def unpublished(connection: Connection, run_id: int = run_id) -> bool:
            return not connection.execute(
                text("SELECT 1 FROM published_runs WHERE run_id = :run"), {"run": run_id}
            ).first()

        for table in ("local_scores", "global_scores"):
            delete_in_batches(
                engine,
                table,
                "run_id = :run",
                {"run": run_id},
                batch_rows=batch,
                before=unpublished,
            )
    return run_ids


# A succeeded run `r` whose scores nobody is served: not published, and older than the `:kept`
# newest succeeded runs.
_SUPERSEDED = (
    "r.id NOT IN (SELECT run_id FROM published_runs)"
    " AND r.id NOT IN (SELECT n.id FROM training_runs n WHERE n.status = 'succeeded'"
    " ORDER BY n.id DESC LIMIT :kept)"
)


def is_superseded(connection: Connection, run_id: int, *, runs_kept: int) -> bool:
    """Whether the succeeded run `run_id` is one `prune_superseded_scores` deletes the scores of."""
    row = connection.execute(
        text(
            "SELECT 1 FROM training_runs r WHERE r.id = :run AND r.status = 'succeeded'"
            f" AND {_SUPERSEDED}"
        ),
        {"run": run_id, "kept": runs_kept},
    ).first()
    return row is not None
