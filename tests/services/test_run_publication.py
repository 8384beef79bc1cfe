"""Publication against a late cancel: a cancel that arrives after the last epoch but before
the scores are published stops the run; one that arrives after publication is refused."""

from datetime import UTC, datetime

import pytest
from sqlmodel import Session

from app.core.db import get_engine
from app.core.errors import Conflict
from app.models import TrainingRun
from app.services import leases, publication, runs
from ml.config import LicchaviConfig


def queued_run() -> int:
    with Session(get_engine()) as session:
        run = runs.new_run(
            criteria=None, config=LicchaviConfig(), trigger="manual", warm_start=False
        )
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def cancel(run_id: int) -> None:
    with Session(get_engine()) as session:
        runs.cancel_run(session, run_id)
        session.commit()


def status(run_id: int) -> str:
    with Session(get_engine()) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        return run.status


def test_a_cancel_before_publication_stops_the_run(committed_database: str) -> None:
    run_id = queued_run()
    claim = leases.claim(get_engine(), run_id=run_id, owner="w", lease_seconds=60)
    assert claim is not None
    cancel(run_id)  # the worker is past its last epoch: only publication can notice
    with pytest.raises(leases.CancelledBeforePublication), get_engine().begin() as connection:
        publication.publish(connection, claim, [], datetime.now(UTC))
    assert status(run_id) == "running"  # the transaction rolled back; the task ends it
    with get_engine().begin() as connection:
        assert leases.finish(connection, claim, status="cancelled")
    assert status(run_id) == "cancelled"


def test_a_cancel_after_publication_is_refused(committed_database: str) -> None:
    run_id = queued_run()
    claim = leases.claim(get_engine(), run_id=run_id, owner="w", lease_seconds=60)
    assert claim is not None
    with get_engine().begin() as connection:
        assert publication.publish(connection, claim, [], datetime.now(UTC)) == []
    assert status(run_id) == "succeeded"
    with pytest.raises(Conflict):
        cancel(run_id)
    assert status(run_id) == "succeeded"
