"""Auto runs spaced by their training time: under a steady stream of writes, a criterion's next
auto run waits a multiple of its last one's training time (capped), never less than the
debounce, so the worker leaves the API most of the CPU whatever the number of comparisons."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from app.core.config import get_settings
from app.core.db import get_engine
from app.models import TrainingRun
from app.runs import service as runs
from app.runs.freshness import MAX_SPACED_DELAY_SECONDS, comparisons_changed
from ml.config import LicchaviConfig
from tests.conftest import reset_caches


@pytest.fixture
def database(committed_database: str) -> Iterator[None]:
    yield


def finished_auto_run(criterion: str, took: float) -> None:
    """An auto run of `criterion` that trained `took` seconds and ended a minute ago."""
    ended = datetime.now(UTC) - timedelta(minutes=1)
    run = runs.new_run(
        criteria=[criterion], config=LicchaviConfig(), trigger="auto", warm_start=True
    )
    run.status = "succeeded"
    run.started_at = ended - timedelta(seconds=took)
    run.finished_at = ended
    with Session(get_engine()) as session:
        session.add(run)
        session.commit()


def delay_of_next_auto_run(criterion: str) -> float:
    """The debounce `comparisons_changed` gives the auto run it queues (seconds)."""
    with Session(get_engine()) as session:
        before = datetime.now(UTC)
        (run_id,) = comparisons_changed(session, criteria=[criterion])
        session.commit()
        run = session.exec(select(TrainingRun).where(TrainingRun.id == run_id)).one()
        assert run.not_before is not None
        not_before = run.not_before
        if not_before.tzinfo is None:
            not_before = not_before.replace(tzinfo=UTC)
        return (not_before - before).total_seconds()


def test_the_next_auto_run_waits_a_multiple_of_the_last_ones_training(database: None) -> None:
    settings = get_settings()
    debounce, factor = settings.auto_train_delay_seconds, settings.auto_train_spacing_factor
    assert factor > 0
    # No auto run yet: the debounce alone.
    assert delay_of_next_auto_run("first") == pytest.approx(debounce, abs=0.5)
    # A short run: still the debounce (the spacing never shortens it).
    finished_auto_run("short", took=0.1)
    assert delay_of_next_auto_run("short") == pytest.approx(debounce, abs=0.5)
    # A run that trained 2.5 s: the next waits factor × 2.5 s.
    finished_auto_run("long", took=2.5)
    assert delay_of_next_auto_run("long") == pytest.approx(max(debounce, factor * 2.5), abs=0.5)
    # Another criterion's long run does not space this one's.
    finished_auto_run("other", took=2.5)
    assert delay_of_next_auto_run("fresh") == pytest.approx(debounce, abs=0.5)
    # However long the last run, freshness keeps its bound.
    finished_auto_run("huge", took=600)
    assert delay_of_next_auto_run("huge") == pytest.approx(MAX_SPACED_DELAY_SECONDS, abs=0.5)


def test_a_spacing_factor_of_zero_keeps_the_debounce_alone(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_SPACING_FACTOR", "0")
    reset_caches()
    finished_auto_run("long", took=2.5)
    debounce = get_settings().auto_train_delay_seconds
    assert delay_of_next_auto_run("long") == pytest.approx(debounce, abs=0.5)
