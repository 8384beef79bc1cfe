"""A run's criteria as claimable rows, on PostgreSQL and SQLite: each claimed once, fenced by
attempt, the run published once by whichever finishes last (two finishing at once included);
a cancel before publication or a failure ends the run with nothing published and its staged
scores deleted (in batches, after the run ended), and a cancel after publication is refused."""

import logging
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from app.core.db import get_engine
from app.core.errors import Conflict
from app.models import Criterion, TrainingRun, TrainingRunCriterion, User, Video
from app.runs import fanout, leases, publication
from app.runs import service as runs
from app.runs.recovery import prune_superseded_scores, runs_to_wake
from ml.config import LicchaviConfig
from workers.tasks.maintenance import wake_stalled_runs
from workers.tasks.training import fail_criterion, take_run

CRITERIA = ["importance", "largely_recommended", "reliability"]
Run = TrainingRun.__table__  # type: ignore[attr-defined]
Item = TrainingRunCriterion.__table__  # type: ignore[attr-defined]


def catalogue() -> None:
    with Session(get_engine()) as session:
        known = set(session.exec(select(Criterion.name)).all())  # the migration seeds some
        session.add_all([Criterion(name=name) for name in CRITERIA if name not in known])
        session.add_all([Video(external_id=f"yt:v{i}") for i in range(3)])
        session.add(User(external_id="ann"))
        session.commit()


def stored_run(criteria: list[str] | None = None, trigger: str = "manual") -> int:
    with Session(get_engine()) as session:
        run = runs.new_run(
            criteria=criteria, config=LicchaviConfig(), trigger=trigger, warm_start=False
        )
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def listed_run(names: list[str] = CRITERIA, withdrawn: list[str] | None = None) -> leases.Claim:
    run_id = stored_run()
    claim = leases.claim(get_engine(), run_id=run_id, owner="lister", lease_seconds=60)
    assert claim is not None
    with get_engine().begin() as connection:
        left, published = fanout.list_criteria(
            connection,
            claim,
            names=names,
            withdrawn=withdrawn or [],
            snapshot_at=datetime.now(UTC),
        )
    assert (left, published) == (len(names), None)
    return claim


def output(criterion: str, offset: float = 0.0) -> publication.CriterionOutput:
    with get_engine().connect() as connection:
        criterion_id = connection.execute(
            text("SELECT id FROM criteria WHERE name = :name"), {"name": criterion}
        ).scalar_one()
        videos = [row[0] for row in connection.execute(text("SELECT id FROM videos ORDER BY id"))]
        user = connection.execute(text("SELECT id FROM users")).scalar_one()
    n = len(videos)
    return publication.CriterionOutput(
        criterion_id=int(criterion_id),
        criterion=criterion,
        epoch=3,
        state=b"final state of " + criterion.encode(),
        video_ids=np.array(videos, dtype=np.int64),
        global_scores=np.arange(n, dtype=np.float64) + offset,
        global_uncertainty=np.ones(n),
        n_comparisons=np.ones(n, dtype=np.int64),
        n_contributors=np.ones(n, dtype=np.int64),
        local_user_ids=np.full(n, user, dtype=np.int64),
        local_video_ids=np.array(videos, dtype=np.int64),
        local_scores=np.zeros(n),
        local_uncertainty=np.ones(n),
    )


def claim(owner: str, run_id: int | None = None, lease: float = 60) -> fanout.CriterionClaim:
    taken = fanout.claim_next(get_engine(), owner=owner, lease_seconds=lease, run_id=run_id)
    assert taken is not None
    return taken


def finish(taken: fanout.CriterionClaim) -> list[str] | None:
    done = output(taken.criterion)  # read first: SQLite has one writer, and this thread is it
    fanout.stage(get_engine(), taken, done, lease_seconds=60)
    with get_engine().begin() as connection:
        return fanout.finish(connection, taken, data_fingerprint="f" * 64, n_comparisons=2)


def pointers() -> dict[str, int]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.name, p.run_id FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
            )
        ).all()
    return {str(name): int(run_id) for name, run_id in rows}


def score_rows(run_id: int) -> int:
    with get_engine().connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM global_scores WHERE run_id = :run"), {"run": run_id}
            ).scalar_one()
        )


def run_status(run_id: int) -> tuple[str, float, str | None]:
    with get_engine().connect() as connection:
        row = connection.execute(
            text("SELECT status, progress, error FROM training_runs WHERE id = :id"), {"id": run_id}
        ).one()
    return str(row[0]), float(row[1]), row[2]


def test_each_criterion_is_claimed_once_and_the_last_one_publishes_all(
    committed_database: str,
) -> None:
    catalogue()
    run = listed_run(withdrawn=[])
    first, second, third = claim("a"), claim("b"), claim("c")
    assert [first.criterion, second.criterion, third.criterion] == CRITERIA
    assert fanout.claim_next(get_engine(), owner="d", lease_seconds=60) is None
    assert fanout.claimable_count(get_engine(), limit=5) == 0
    with get_engine().begin() as connection:
        assert not fanout.renew(
            connection, second, lease_seconds=60, progress=0.5, epoch=5, max_epochs=10
        )
    assert run_status(run.run_id)[1] == pytest.approx(0.5 / 3)

    assert finish(first) is None and finish(third) is None
    assert run_status(run.run_id)[0] == "running"
    assert score_rows(run.run_id) == 6  # staged, and not served: no pointer moved yet
    assert pointers() == {}
    assert finish(second) == CRITERIA
    assert run_status(run.run_id)[:2] == ("succeeded", 1.0)
    assert pointers() == dict.fromkeys(CRITERIA, run.run_id)
    with pytest.raises(leases.LeaseLost), get_engine().begin() as connection:
        fanout.finish(connection, second)  # a second publication: refused
    with Session(get_engine()) as session, pytest.raises(Conflict):
        runs.cancel_run(session, run.run_id)  # too late: refused, never acknowledged and ignored
    with get_engine().connect() as connection:
        items = fanout.criteria_of(connection, [run.run_id])[run.run_id]
    assert [(i["criterion"], i["status"], i["trained_by"]) for i in items] == [
        ("importance", "trained", "a"),
        ("largely_recommended", "trained", "b"),
        ("reliability", "trained", "c"),
    ]


def test_a_criterion_retaken_after_its_lease_expired_fences_the_old_worker(
    committed_database: str,
) -> None:
    catalogue()
    run = listed_run(names=["importance"], withdrawn=["reliability"])
    stale = claim("dead")
    past = datetime.now(UTC) - timedelta(seconds=1)
    with get_engine().begin() as connection:  # its worker died: its lease lapses, the run's too
        connection.execute(update(Run).where(Run.c.id == run.run_id).values(lease_expires_at=past))
        connection.execute(
            update(Item).where(Item.c.id == stale.item_id).values(lease_expires_at=past)
        )
    with get_engine().begin() as connection:
        assert runs_to_wake(connection, resend_after_seconds=60) == [run.run_id]
    fresh = claim("alive")
    assert (fresh.item_id, fresh.attempt) == (stale.item_id, 2)
    with pytest.raises(leases.LeaseLost), get_engine().begin() as connection:
        fanout.renew(connection, stale, lease_seconds=60, progress=0.9, epoch=9, max_epochs=10)
    with pytest.raises(leases.LeaseLost):
        finish(stale)
    with get_engine().begin() as connection:
        assert not fanout.stop_run(connection, stale, status="failed", error="late")
        assert not fanout.hand_off(connection, stale)
    assert finish(fresh) == ["importance", "reliability"]  # the withdrawn one moves too
    assert pointers() == {"importance": run.run_id, "reliability": run.run_id}


def test_a_worker_failing_after_a_takeover_warns_and_leaves_the_run_to_its_new_holder(
    committed_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker cut off from the database fails on its next write; when it gets through again
    the criterion is another worker's, so its failure is one warning line, and neither the
    run nor the criterion changes. The holder's own failure still fails the run, traceback
    logged."""
    catalogue()
    run = listed_run(names=["importance"])
    stale = claim("dead")
    past = datetime.now(UTC) - timedelta(seconds=1)
    with get_engine().begin() as connection:
        connection.execute(update(Run).where(Run.c.id == run.run_id).values(lease_expires_at=past))
        connection.execute(
            update(Item).where(Item.c.id == stale.item_id).values(lease_expires_at=past)
        )
    fresh = claim("alive")
    caplog.set_level(logging.INFO, logger="workers.tasks.training")

    assert fail_criterion(get_engine(), stale, OSError("server closed the connection")) == (
        "lease lost"
    )
    records = [r for r in caplog.records if r.name == "workers.tasks.training"]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.WARNING, None)]
    assert "taken over by another worker" in records[0].getMessage()
    assert "OSError: server closed the connection" in records[0].getMessage()
    assert run_status(run.run_id)[0] == "running"
    with get_engine().connect() as connection:
        assert fanout.holds(connection, fresh) and not fanout.holds(connection, stale)

    caplog.clear()
    assert fail_criterion(get_engine(), fresh, ValueError("no luck")) == "failed"
    records = [r for r in caplog.records if r.name == "workers.tasks.training"]
    assert [r.levelno for r in records] == [logging.ERROR]
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
    assert run_status(run.run_id)[::2] == ("failed", "importance: ValueError: no luck")


@pytest.mark.parametrize(("trigger", "status"), [("auto", "cancelled"), ("manual", "failed")])
def test_a_run_with_nothing_to_train_ends_in_one_line(
    committed_database: str, caplog: pytest.LogCaptureFixture, trigger: str, status: str
) -> None:
    """A comparison on a new criterion queues an automatic run; deleted before the run starts,
    it leaves nothing to train: the auto run is skipped (cancelled, saying why), a manual run
    asking for that criterion fails; both in one log line, no traceback."""
    catalogue()
    run_id = stored_run(["importance"], trigger)
    caplog.set_level(logging.INFO, logger="workers.tasks.training")
    assert take_run(get_engine(), run_id, "lister") == status
    state, _progress, error = run_status(run_id)
    assert state == status and error is not None
    assert "no comparisons for criterion importance" in error
    records = [r for r in caplog.records if r.name == "workers.tasks.training"]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in records)
    assert any(f"run {run_id}: {status}" in r.getMessage() for r in records)


def test_a_cancel_before_publication_publishes_nothing(committed_database: str) -> None:
    catalogue()
    run = listed_run()
    first, second = claim("a"), claim("b")
    assert finish(first) is None
    with Session(get_engine()) as session:
        runs.cancel_run(session, run.run_id)
        session.commit()
    with get_engine().begin() as connection:  # the worker sees it at its next renewal
        assert fanout.renew(connection, second, lease_seconds=60, progress=1, epoch=3, max_epochs=3)
    with pytest.raises(leases.CancelledBeforePublication):
        finish(second)
    with get_engine().begin() as connection:
        assert fanout.stop_run(connection, second, status="cancelled")
    assert score_rows(run.run_id) == 3  # what the first staged, until the worker deletes it
    fanout.discard_staged(get_engine(), run.run_id)
    assert run_status(run.run_id)[0] == "cancelled"
    assert pointers() == {} and score_rows(run.run_id) == 0
    assert fanout.claim_next(get_engine(), owner="c", lease_seconds=60) is None
    with Session(get_engine()) as session, pytest.raises(Conflict, match="cancelled"):
        runs.cancel_run(session, run.run_id)


def test_a_failing_criterion_fails_the_run_and_stops_the_others(committed_database: str) -> None:
    catalogue()
    earlier = listed_run(names=["importance"])  # published, and must stay so
    assert finish(claim("a")) == ["importance"]

    run = listed_run()
    first, second = claim("a"), claim("b")
    assert finish(first) is None
    with get_engine().begin() as connection:
        assert fanout.stop_run(connection, second, status="failed", error="ValueError: no luck")
    fanout.discard_staged(get_engine(), run.run_id)
    status, _progress, error = run_status(run.run_id)
    assert (status, error) == ("failed", "largely_recommended: ValueError: no luck")
    with get_engine().connect() as connection:
        items = fanout.criteria_of(connection, [run.run_id])[run.run_id]
    assert [i["status"] for i in items] == ["trained", "failed", "cancelled"]
    assert score_rows(run.run_id) == 0 and pointers() == {"importance": earlier.run_id}
    assert fanout.claim_next(get_engine(), owner="c", lease_seconds=60) is None
    with pytest.raises(leases.LeaseLost), get_engine().begin() as connection:
        fanout.renew(connection, first, lease_seconds=60, progress=1, epoch=1, max_epochs=1)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_two_criteria_finishing_at_once_publish_the_run_once(committed_database: str) -> None:
    catalogue()

    def finishing(
        taken: fanout.CriterionClaim, barrier: threading.Barrier, results: list[list[str] | None]
    ) -> None:
        fanout.stage(get_engine(), taken, output(taken.criterion), lease_seconds=60)
        with get_engine().begin() as connection:
            barrier.wait()
            results.append(fanout.finish(connection, taken))

    for _ in range(5):
        run = listed_run(names=CRITERIA[:2])
        first, second = claim("a"), claim("b")
        barrier = threading.Barrier(2)
        results: list[list[str] | None] = []
        threads = [
            threading.Thread(target=finishing, args=(t, barrier, results)) for t in (first, second)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results, key=lambda r: r is not None) == [None, CRITERIA[:2]]
        assert run_status(run.run_id)[0] == "succeeded"


def test_staged_scores_of_a_failed_run_are_pruned(committed_database: str) -> None:
    catalogue()
    run = listed_run(names=CRITERIA[:2])
    assert finish(claim("a")) is None
    with get_engine().begin() as connection:  # ended some other way: its worker died
        connection.execute(update(Run).where(Run.c.id == run.run_id).values(status="failed"))
    assert score_rows(run.run_id) == 3
    assert prune_superseded_scores(get_engine(), runs_kept=20) == [run.run_id]
    assert score_rows(run.run_id) == 0


def test_a_handed_off_criterion_and_its_run_are_taken_at_once_and_only_once(
    committed_database: str,
) -> None:
    catalogue()
    run = listed_run(names=["importance"])
    engine = get_engine()
    stopping = claim("stopping", lease=3600)
    # With an hour of lease left, nobody can take the criterion or its run...
    assert fanout.claim_next(engine, owner="early", lease_seconds=60) is None
    assert leases.claim(engine, run_id=run.run_id, owner="early", lease_seconds=60) is None
    with engine.begin() as connection:
        assert fanout.hand_off(connection, stopping)
    # ...until it is handed off: then one claim of each wins, with the next attempt.
    taken_over = leases.claim(engine, run_id=run.run_id, owner="next", lease_seconds=60)
    assert taken_over is not None and taken_over.attempt == run.attempt + 1
    assert leases.claim(engine, run_id=run.run_id, owner="late", lease_seconds=60) is None
    with engine.begin() as connection:  # listing again keeps the criteria it has
        assert fanout.list_criteria(
            connection, taken_over, names=CRITERIA, withdrawn=[], snapshot_at=datetime.now(UTC)
        ) == (1, None)
    resumed = claim("next")
    assert (resumed.item_id, resumed.attempt) == (stopping.item_id, stopping.attempt + 1)
    assert fanout.claim_next(engine, owner="late", lease_seconds=60) is None
    with engine.begin() as connection:
        assert not fanout.hand_off(connection, stopping)  # no longer ours: nothing written
        with pytest.raises(leases.LeaseLost):
            fanout.renew(
                connection, stopping, lease_seconds=60, progress=0.5, epoch=5, max_epochs=9
            )


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_taken_over_criterion_checkpoints_past_its_cut_off_owners_open_transaction(
    committed_database: str,
) -> None:
    """The owner of a criterion is cut off from the network halfway through replacing its
    checkpoint: its transaction has deleted the old checkpoint's row (so holds its lock) and
    the server keeps it open until it notices the dead connection. The worker that takes the
    criterion over must checkpoint and renew without waiting for it: a wait longer than its
    lease would hand the criterion over a second time."""
    catalogue()
    listed_run(names=["importance"])
    cut_off = claim("cut off")

    def checkpoint(connection: Connection, epoch: int, state: bytes) -> None:
        publication.save_state(
            connection,
            run_id=cut_off.run_id,
            criterion="importance",
            epoch=epoch,
            state=state,
            is_checkpoint=True,
        )

    with get_engine().begin() as connection:
        checkpoint(connection, 25, b"checkpoint 25")
    dead = get_engine().connect()
    try:
        transaction = dead.begin()
        checkpoint(dead, 50, b"checkpoint 50, never committed")
        past = datetime.now(UTC) - timedelta(seconds=1)
        with get_engine().begin() as connection:  # its lease lapses meanwhile
            connection.execute(
                update(Item).where(Item.c.id == cut_off.item_id).values(lease_expires_at=past)
            )
        taker = claim("taker")
        assert taker.attempt == 2
        with get_engine().connect() as connection:  # it resumes from the last committed one
            resumed = publication.latest_state(
                connection, run_id=taker.run_id, criterion="importance", checkpoint=True
            )
        assert resumed == b"checkpoint 25"
        with get_engine().begin() as connection:
            # A wait on the open transaction's lock fails here instead of lasting 20 s.
            connection.execute(text("SET LOCAL lock_timeout = '2s'"))
            checkpoint(connection, 50, b"checkpoint 50 of the taker")
            assert not fanout.renew(
                connection, taker, lease_seconds=60, progress=0.5, epoch=50, max_epochs=100
            )
        with get_engine().connect() as connection:
            assert (
                publication.latest_state(
                    connection, run_id=taker.run_id, criterion="importance", checkpoint=True
                )
                == b"checkpoint 50 of the taker"
            )
        # Nor does the publication wait for it: it leaves the row the dead transaction holds.
        fanout.stage(get_engine(), taker, output("importance"), lease_seconds=60)
        with get_engine().begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert fanout.finish(connection, taker, data_fingerprint="f" * 64) == ["importance"]
        transaction.rollback()  # the server drops the dead connection at last
    finally:
        dead.close()

    def checkpoints() -> list[bytes]:
        with get_engine().connect() as connection:
            return [
                bytes(state)
                for state in connection.execute(
                    text("SELECT state FROM model_states WHERE run_id = :run AND is_checkpoint"),
                    {"run": taker.run_id},
                ).scalars()
            ]

    assert checkpoints() == [b"checkpoint 25"]  # the row the dead transaction held
    wake_stalled_runs(get_engine())  # run recovery deletes it
    assert checkpoints() == []


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_renewal_locks_the_run_and_its_criterion_in_one_statement(
    committed_database: str,
) -> None:
    """A worker cut off right after its renewal's first statement leaves its transaction open
    on the server. That statement locks the run's row and the criterion's together, so the
    criterion stays out of reach (a claim skips it) until the server drops the connection,
    instead of being taken over by a worker that would then wait on the run's lock to renew."""
    catalogue()
    listed_run(names=["importance"])
    cut_off = claim("cut off")
    past = datetime.now(UTC) - timedelta(seconds=1)
    with get_engine().begin() as connection:  # its lease lapses while it is cut off
        connection.execute(
            update(Item).where(Item.c.id == cut_off.item_id).values(lease_expires_at=past)
        )
    dead = get_engine().connect()
    try:
        transaction = dead.begin()
        assert fanout._lock_run_and_update(dead, cut_off, {"progress": 0.5})
        with get_engine().connect() as connection:
            connection.execute(text("SET lock_timeout = '2s'"))
            with pytest.raises(OperationalError, match="lock timeout"):  # the run's row
                connection.execute(update(Run).where(Run.c.id == cut_off.run_id).values(epoch=1))
        # The criterion's row too: its lapsed lease does not make it claimable yet.
        assert fanout.claim_next(get_engine(), owner="taker", lease_seconds=60) is None
        transaction.rollback()  # the server drops the dead connection at last
    finally:
        dead.close()
    assert claim("taker").attempt == 2


def test_a_run_that_asks_for_cuda_is_left_to_a_worker_that_reads_the_gpu_queue(
    committed_database: str,
) -> None:
    """A CPU-only worker would fail a `device: cuda` run; it leaves it (and its criteria) to a
    worker that reads the `gpu` queue, and goes on with the others."""
    catalogue()
    with Session(get_engine()) as session:
        on_gpu, anywhere = (
            runs.new_run(
                criteria=["importance"],
                config=LicchaviConfig(device=device),
                trigger="manual",
                warm_start=False,
            )
            for device in ("cuda", "auto")
        )
        session.add_all([on_gpu, anywhere])
        session.commit()
        gpu_run, cpu_run = on_gpu.id, anywhere.id
    engine = get_engine()
    assert leases.claimable_run_ids(engine, gpu=False) == [cpu_run]
    assert leases.claimable_run_ids(engine, gpu=True) == [gpu_run, cpu_run]
    assert leases.claim(engine, run_id=gpu_run, owner="cpu", lease_seconds=60, gpu=False) is None
    taken = leases.claim(engine, run_id=gpu_run, owner="gpu", lease_seconds=60, gpu=True)
    assert taken is not None
    with engine.begin() as connection:
        fanout.list_criteria(
            connection, taken, names=["importance"], withdrawn=[], snapshot_at=datetime.now(UTC)
        )
    # Its criterion waits for a GPU worker too.
    assert fanout.claimable_count(engine, limit=5, gpu=False) == 0
    assert fanout.claim_next(engine, owner="cpu", lease_seconds=60, gpu=False) is None
    criterion = fanout.claim_next(engine, owner="gpu", lease_seconds=60, gpu=True)
    assert criterion is not None and criterion.run_id == gpu_run
