"""The operator gauges of /metrics on both databases: they start at zero, and move as runs queue,
wait, lose their lease, finish and get published, and as workers report in."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlmodel import Session

from app.core.db import get_engine
from app.identity.security import create_api_key
from app.main import create_app
from tests.conftest import reset_caches


@pytest.fixture
def api(committed_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("OPERATIONS_METRICS_CACHE_SECONDS", "0")
    monkeypatch.setenv("AUTO_TRAIN_DELAY_SECONDS", "3600")  # queued, not due: nothing waits yet
    reset_caches()
    with TestClient(create_app()) as client:
        yield client


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("licchavi_")
    }


def execute(sql: str, **values: object) -> None:
    with get_engine().begin() as connection:
        connection.execute(text(sql), values)


def test_operator_gauges_move_with_the_work(api: TestClient) -> None:
    first = scrape(api)
    assert first[("licchavi_operations_up", ())] == 1
    assert first[("licchavi_training_runs", (("status", "queued"), ("trigger", "auto")))] == 0
    assert first[("licchavi_oldest_due_run_wait_seconds", ())] == 0
    lag = ("licchavi_scores_freshness_lag_seconds", (("criterion", "largely_recommended"),))
    assert first[lag] == 0

    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["admin"])
        session.commit()
    posted = api.post(
        "/api/v1/comparisons",
        json={
            "user_id": "ann",
            "video_a": "yt:a",
            "video_b": "yt:b",
            "criteria_scores": [{"criterion": "largely_recommended", "score": 3}],
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert posted.status_code == 201
    # The change queued an auto run: the criterion's scores now lag, though nothing is due yet.
    execute(
        "UPDATE training_runs SET created_at = :at", at=datetime.now(UTC) - timedelta(seconds=90)
    )
    queued = scrape(api)
    assert queued[("licchavi_training_runs", (("status", "queued"), ("trigger", "auto")))] == 1
    assert queued[lag] >= 90
    assert queued[("licchavi_oldest_due_run_wait_seconds", ())] == 0

    # Due for a minute and not started: a stuck queue shows.
    execute(
        "UPDATE training_runs SET not_before = :at", at=datetime.now(UTC) - timedelta(seconds=60)
    )
    assert scrape(api)[("licchavi_oldest_due_run_wait_seconds", ())] >= 60

    # Its worker vanished mid-run: the lease expired, and recovery will claim it again.
    moment = datetime.now(UTC)
    execute(
        "UPDATE training_runs SET status = 'running', attempt = 2, started_at = :start,"
        " lease_expires_at = :expired",
        start=moment - timedelta(seconds=30),
        expired=moment - timedelta(seconds=5),
    )
    running = scrape(api)
    assert running[("licchavi_running_runs_with_expired_lease", ())] == 1
    assert running[("licchavi_run_reclaims_total", ())] == 1

    # It succeeds after 30 s and is published: the lag is gone, the duration recorded.
    execute(
        "UPDATE training_runs SET status = 'succeeded', finished_at = :end, snapshot_at = :end",
        end=moment,
    )
    execute(
        "INSERT INTO published_runs (criterion_id, run_id, published_at)"
        " SELECT c.id, r.id, :now FROM criteria c, training_runs r"
        " WHERE c.name = 'largely_recommended'",
        now=datetime.now(UTC),
    )
    execute(
        "INSERT INTO worker_heartbeats (worker, pid, seen_at, current_run_id)"
        " VALUES ('celery@w1:1', 1, :at, NULL), ('celery@w2:2', 2, :at, 1)",
        at=datetime.now(UTC) - timedelta(seconds=12),
    )
    done = scrape(api)
    assert done[lag] == 0
    published = ("licchavi_published_scores_age_seconds", (("criterion", "largely_recommended"),))
    assert 0 <= done[published] < 60
    auto = (("trigger", "auto"),)
    assert done[("licchavi_training_run_duration_seconds_count", auto)] == 1
    assert 29 <= done[("licchavi_training_run_duration_seconds_sum", auto)] <= 31
    assert done[("licchavi_training_run_duration_seconds_bucket", (("le", "10.0"), *auto))] == 0
    assert done[("licchavi_training_run_duration_seconds_bucket", (("le", "30.0"), *auto))] == 1
    assert done[("licchavi_worker_heartbeat_age_seconds", (("worker", "celery@w1:1"),))] >= 12
    assert done[("licchavi_worker_busy", (("worker", "celery@w1:1"),))] == 0
    assert done[("licchavi_worker_busy", (("worker", "celery@w2:2"),))] == 1


def test_metrics_still_answer_when_the_database_does_not(
    api: TestClient, committed_database: str
) -> None:
    execute("ALTER TABLE training_runs RENAME TO training_runs_away")
    try:
        broken = scrape(api)
        assert broken[("licchavi_operations_up", ())] == 0
        assert ("licchavi_training_runs", (("status", "queued"), ("trigger", "auto"))) not in broken
    finally:
        execute("ALTER TABLE training_runs_away RENAME TO training_runs")


def test_queue_depth_follows_the_broker(api: TestClient) -> None:
    from app.runs.wakeups import wake_workers

    cpu = ("licchavi_queue_messages", (("queue", "cpu"),))
    before = scrape(api)
    assert before[("licchavi_broker_up", ())] == 1
    assert before[cpu] == 0 and before[("licchavi_queue_messages", (("queue", "gpu"),))] == 0
    # No worker runs here: the wake-ups wait in the (embedded) broker's queue.
    assert wake_workers(wanted=3, reason="test") == 3
    assert scrape(api)[cpu] == 3


def test_a_broker_that_does_not_answer_is_reported_not_waited_for(
    committed_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import free_port

    monkeypatch.setenv("OPERATIONS_METRICS_CACHE_SECONDS", "0")
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_caches()
    with TestClient(create_app()) as client:
        metrics = scrape(client)
    assert metrics[("licchavi_broker_up", ())] == 0
    assert metrics[("licchavi_operations_up", ())] == 1
    assert not any(name == "licchavi_queue_messages" for name, _labels in metrics)
