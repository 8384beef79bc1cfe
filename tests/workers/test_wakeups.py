"""Wake-ups never pile up in the broker: a 1,000-evaluation sweep and run recovery leave a few
messages, and a run posted during the sweep starts after the evaluation in progress — on Redis
and on the embedded SQLite broker, with a real worker process."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import bindparam, text

from app.core.config import get_settings
from app.core.db import get_engine
from app.main import create_app
from tests.broker_support import waiting_messages
from tests.conftest import create_database, drop_database, migrate, reset_caches
from tests.helpers import wait_for
from tests.workers.training_support import (
    FAST_RECOVERY,
    admin_headers,
    import_csv,
    run_row,
    start_worker,
    stop_worker,
    synthetic_csv,
    wait_for_run,
)

MAX_PENDING = 3
# Concurrent senders (the API, the scheduler, the worker's loop, run recovery) may each see room
# in the queue at once; each overshoots by one message at most.
BOUND = MAX_PENDING + 3
SETTINGS = {
    **FAST_RECOVERY,
    "AUTO_TRAIN_ENABLED": "false",
    "WAKEUP_MAX_PENDING": str(MAX_PENDING),
    "SWEEP_SCHEDULER_INTERVAL_SECONDS": "0.2",
    "SWEEP_RESEND_AFTER_SECONDS": "2",
}
# 10 × 10 grid points × 10 seeds on a tiny synthetic set, all released at once.
SWEEP = {
    "name": "thousand",
    "method": "grid",
    "parameters": {
        "w": {"values": [0.1 * (i + 1) for i in range(10)]},
        "w0": {"values": [0.1 * (i + 1) for i in range(10)]},
    },
    "repeats": {"seeds": list(range(10))},
    "include_baseline": False,
    "evaluation": {
        "kind": "synthetic",
        "generator": {"n_users": 10, "n_videos": 20, "comps_per_video": 2},
    },
    "objectives": [{"metric": "spearman", "direction": "maximize"}],
    "base": {"epochs": 5, "compute_uncertainty": False},
    "budget": {"max_parallel": 100},
}
N_EVALUATIONS = 1000
# A run posted during the sweep waits for the evaluation in progress (and, by a race with the
# post, the next one) — not for the hundreds queued before it.
EVALUATIONS_BEFORE_THE_RUN = 3
# Never stops early (precision 1): lasts until cancelled.
# As long as a run may be (LicchaviConfig bounds epochs): far longer than the test waits.
ENDLESS = {"config": {"solver": "faithful", "epochs": 100_000, "precision": 1.0}}
CHEAP = {"config": {"epochs": 5}}


@pytest.fixture(params=["redis", "embedded"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated database and a broker: PostgreSQL + Redis, or SQLite + the embedded broker."""
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    if request.param == "embedded":
        reset_caches()
        get_settings().ensure_data_dir()
        migrate(get_settings().resolved_database_url)
        yield "embedded"
        return
    broker_url = request.getfixturevalue("redis_broker_url")
    url, admin = create_database("licchavi_wakeups")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CELERY_BROKER_URL", broker_url)
    reset_caches()
    yield "redis"
    from app.core.db import dispose_engine

    dispose_engine()
    drop_database(url, admin)


def accepted(response: Any) -> int:
    """The id of what a 202 response created."""
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def evaluation_counts(sweep_id: int) -> dict[str, int]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT status, count(*) FROM sweep_evaluations WHERE sweep_id = :sweep"
                " GROUP BY status"
            ),
            {"sweep": sweep_id},
        ).all()
    return {str(status): int(count) for status, count in rows}


def finished_by(sweep_id: int, moment: Any) -> int:
    """Evaluations of the sweep that had finished at `moment`."""
    with get_engine().connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM sweep_evaluations WHERE sweep_id = :sweep"
                    " AND finished_at IS NOT NULL AND finished_at <= :moment"
                ),
                {"sweep": sweep_id, "moment": moment},
            ).scalar_one()
        )


def resends(run_ids: list[int]) -> set[tuple[int, Any]]:
    """(run, wakeup_sent_at) pairs: run recovery marks a run each time it wakes a worker for it."""
    with get_engine().connect() as connection:
        rows = connection.execute(
            text("SELECT id, wakeup_sent_at FROM training_runs WHERE id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": run_ids},
        ).all()
    return {(int(run), sent) for run, sent in rows if sent is not None}


@pytest.fixture
def service(broker: str, tmp_path: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """One worker process (one slot) on a small data set, and the API in this process."""
    import_csv(synthetic_csv(tmp_path, n_users=10, n_videos=30, n_comparisons=100))
    worker = start_worker()
    try:
        with TestClient(create_app()) as client:
            yield client, admin_headers()
    finally:
        stop_worker(worker)


def test_a_thousand_evaluations_leave_few_messages_and_a_run_starts_next(
    service: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = service
    sweep_id = accepted(client.post("/api/v1/sweeps", json=SWEEP, headers=headers))
    # Every evaluation released (queued for the workers), and the worker busy on them.
    wait_for(
        "the sweep's 1,000 evaluations to be released and the first to finish",
        lambda: (
            (counts := evaluation_counts(sweep_id)).get("pending", 0) == 0
            and sum(counts.values()) == N_EVALUATIONS
            and counts.get("succeeded", 0) >= 1
        ),
        300,
    )
    waiting = waiting_messages()
    assert waiting <= BOUND, f"{waiting} messages wait for 1 worker slot"

    before = evaluation_counts(sweep_id).get("succeeded", 0)
    run_id = accepted(client.post("/api/v1/training-runs", json=CHEAP, headers=headers))
    # Wait for the run's start, or for more evaluations to end than a prompt start
    # allows (the failure, seen without waiting for the whole sweep).
    wait_for(
        "the run to start, or evaluations to pass it",
        lambda: (
            run_row(run_id)["started_at"] is not None
            or evaluation_counts(sweep_id).get("succeeded", 0)
            > before + EVALUATIONS_BEFORE_THE_RUN + 5
        ),
        300,
    )
    started_at = run_row(run_id)["started_at"]
    assert started_at is not None, "evaluations went on while the run waited"
    passed = finished_by(sweep_id, started_at) - before
    assert passed <= EVALUATIONS_BEFORE_THE_RUN, f"{passed} evaluations ran first"
    run = wait_for_run(client, run_id, 120)
    assert run["status"] == "succeeded", run["error"]
    assert waiting_messages() <= BOUND

    cancelled = client.post(f"/api/v1/sweeps/{sweep_id}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text


def test_run_recovery_sends_no_copies_while_a_wake_up_waits(
    service: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = service
    blocker_id = accepted(client.post("/api/v1/training-runs", json=ENDLESS, headers=headers))
    wait_for_run(client, blocker_id, 120, {"running"})
    # The only worker slot is taken: these wait in the queue.
    queued = [
        accepted(client.post("/api/v1/training-runs", json=CHEAP, headers=headers))
        for _ in range(6)
    ]
    # Run recovery (every 0.5 s) finds them queued for over RUN_RESEND_AFTER_SECONDS
    # (1) again and again; each time it marks them.
    seen: set[tuple[int, Any]] = set()

    def found_three_times() -> bool:
        seen.update(resends(queued))
        return len(seen) >= 3 * len(queued)

    wait_for("run recovery to find the queued runs three times", found_three_times, 60)
    assert run_row(blocker_id)["status"] == "running"
    waiting = waiting_messages()
    assert waiting <= BOUND, f"{waiting} messages for {len(queued)} queued runs"

    # Coalesced wake-ups lose no run: once the slot is free, every queued run trains.
    client.post(f"/api/v1/training-runs/{blocker_id}/cancel", headers=headers)
    assert wait_for_run(client, blocker_id, 60)["status"] == "cancelled"
    for run_id in queued:
        run = wait_for_run(client, run_id, 120)
        assert run["status"] == "succeeded", run["error"]
