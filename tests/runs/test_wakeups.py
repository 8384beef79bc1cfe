"""Coalesced wake-ups: a bounded number wait in the broker (Redis and the embedded SQLite
transport), and a woken worker finds exactly the runs a claim would take."""

import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import get_engine
from app.models import TrainingRun
from app.runs import leases
from app.runs import service as runs
from app.runs.wakeups import wake_after_commit, wake_workers
from ml.config import LicchaviConfig
from tests.broker_support import QUEUE, waiting_messages
from tests.conftest import reset_caches

Run = TrainingRun.__table__  # type: ignore[attr-defined]


@pytest.fixture(params=["redis", "embedded"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("WAKEUP_MAX_PENDING", "3")
    if request.param == "redis":
        monkeypatch.setenv("CELERY_BROKER_URL", request.getfixturevalue("redis_broker_url"))
    reset_caches()
    yield str(request.param)
    reset_caches()


def test_senders_leave_at_most_max_pending_waiting(broker: str) -> None:
    assert wake_workers(wanted=10) == 3
    assert waiting_messages() == 3
    assert wake_workers() == 0  # the queue is full: any waiting wake-up will do
    assert wake_workers(wanted=5) == 0
    assert waiting_messages() == 3


def test_run_recovery_wakes_only_an_empty_queue(broker: str) -> None:
    assert wake_workers(max_pending=1) == 1
    assert wake_workers(max_pending=1) == 0
    assert waiting_messages() == 1


def test_a_delayed_wake_up_is_sent_even_when_the_queue_is_full(broker: str) -> None:
    wake_workers(wanted=3)
    # The waiting ones would be taken before the delayed run is due.
    assert wake_workers(countdown=30) == 1
    assert waiting_messages() == 4


def test_a_transaction_sends_one_wake_up_however_many_runs_it_queued(
    broker: str, committed_database: str
) -> None:
    with Session(get_engine()) as session:
        for run_id in (1, 2, 3):
            wake_after_commit(session, run_id=run_id)
        session.commit()
    assert waiting_messages() == 1


def test_a_broker_down_is_reported_not_raised_and_not_tried_on_every_write(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Reaching a broker that is down takes seconds, and every write sends a wake-up: after a
    failure the next wake-ups are skipped for a while (run recovery re-sends them)."""
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:9/0")  # nothing listens there
    reset_caches()
    caplog.set_level(logging.DEBUG, logger="app.runs.wakeups")
    assert wake_workers(reason="first") == -1
    assert wake_workers(reason="second") == -1
    messages = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.message.startswith("wake-up for")
    ]
    assert [level for level, _ in messages] == [logging.WARNING, logging.DEBUG]
    assert "wake-up for first not sent" in messages[0][1]
    assert "wake-up for second skipped" in messages[1][1]
    reset_caches()  # settings changed: the broker is tried again at once
    caplog.clear()
    assert wake_workers(reason="third") == -1
    assert "wake-up for third not sent" in caplog.records[-1].getMessage()


def new_run(*, trigger: str = "manual", **values: object) -> int:
    with Session(get_engine()) as session:
        run = runs.new_run(
            criteria=["c"], config=LicchaviConfig(), trigger=trigger, warm_start=False
        )
        session.add(run)
        session.commit()
        assert run.id is not None
        run_id = run.id
    if values:
        with get_engine().begin() as connection:
            connection.execute(update(Run).where(Run.c.id == run_id).values(**values))
    return run_id


def test_claimable_runs_are_the_ones_a_claim_takes(committed_database: str) -> None:
    now = datetime.now(UTC)
    later, past = now + timedelta(minutes=5), now - timedelta(minutes=5)
    due = new_run()
    new_run(not_before=later)  # an auto run's debounce: not before its time
    new_run(cancel_requested=True)
    orphan = new_run(status="running", lease_owner="dead", lease_expires_at=past)
    new_run(status="running", lease_owner="alive", lease_expires_at=later)
    new_run(trigger="auto", status="running", lease_owner="alive", lease_expires_at=later)
    behind_sibling = new_run(trigger="auto")

    assert leases.claimable_run_ids(get_engine()) == [due, orphan]
    assert leases.claim(get_engine(), run_id=behind_sibling, owner="w", lease_seconds=60) is None
    for run_id in (due, orphan):
        assert leases.claim(get_engine(), run_id=run_id, owner="w", lease_seconds=60)
    assert leases.claimable_run_ids(get_engine()) == []


def test_the_embedded_broker_deletes_what_it_delivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu's SQLAlchemy transport kept every delivered message (marked invisible): the broker's
    file grew by every wake-up ever sent. Ours deletes a message as it delivers it, and the
    delivered ones an older version left at its first delivery."""
    from app.core.celery_app import celery_app

    reset_caches()
    assert wake_workers(wanted=3, max_pending=3) == 3
    broker = get_settings().data_dir / "broker.sqlite3"
    with sqlite3.connect(broker) as connection:  # one left delivered by an older version
        connection.execute(
            "UPDATE kombu_message SET visible = 0 WHERE id = (SELECT min(id) FROM kombu_message)"
        )
    with celery_app.connection_for_read() as connection:
        queue = connection.SimpleQueue(QUEUE)
        try:
            queue.get(timeout=5).ack()
        finally:
            queue.close()
    with sqlite3.connect(broker) as connection:
        rows = connection.execute("SELECT visible FROM kombu_message").fetchall()
    assert rows == [(1,)]  # the one not delivered yet
    assert waiting_messages() == 1
