"""Cancel a queued and a running run, and failing runs (nothing to train, not converged): each
ends recorded, and the published scores stay those of the last successful run."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import reset_caches
from tests.helpers import wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    published_run,
    run_row,
    start_worker,
    stop_worker,
    stored_scores,
    wait_for_run,
)

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
RUNS = "/api/v1/training-runs"


def test_cancel_queued_and_running_runs_and_a_failure_keep_published_scores(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    import_csv(DEMO)
    worker = start_worker()
    try:
        with TestClient(create_app()) as client:
            headers = admin_headers()
            good = client.post(RUNS, json={}, headers=headers).json()["id"]
            assert wait_for_run(client, good, 120)["status"] == "succeeded"
            published_scores = stored_scores(good)

            # A long run (cold: a warm start would run only the schedule's last epochs) occupies
            # the only worker process, so the next one stays queued.
            long = client.post(
                RUNS,
                json={
                    "solver": "faithful",
                    "config": {"epochs": 100_000, "precision": 1.0},
                    "warm_start": False,
                },
                headers=headers,
            ).json()["id"]
            wait_for_run(client, long, 60, statuses={"running"})
            queued = client.post(RUNS, json={}, headers=headers).json()["id"]
            cancelled = client.post(f"{RUNS}/{queued}/cancel", headers=headers)
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled"
            assert client.post(f"{RUNS}/{queued}/cancel", headers=headers).status_code == 409

            wait_for("the long run to make progress", lambda: run_row(long)["epoch"] > 0, 60)
            asked = client.post(f"{RUNS}/{long}/cancel", headers=headers).json()
            assert asked["cancel_requested"] is True
            stopped = wait_for_run(client, long, 60)
            assert stopped["status"] == "cancelled" and stopped["epoch"] < 100_000

            # No comparison rates `pedagogy`: the run fails and says why.
            failing = client.post(RUNS, json={"criteria": ["pedagogy"]}, headers=headers).json()
            failed = wait_for_run(client, failing["id"], 60)
            assert failed["status"] == "failed"
            assert "no comparisons for criterion pedagogy" in failed["error"]

            # The converged solver stopped short of its tolerance: failed, saying so (cold: the
            # published run is the converged default's, from which one iteration is enough).
            short = client.post(
                RUNS,
                json={
                    "config": {"solver": "converged", "max_iterations": 1},
                    "warm_start": False,
                },
                headers=headers,
            ).json()["id"]
            unfinished = wait_for_run(client, short, 120)
            assert unfinished["status"] == "failed"
            assert "did not converge: stationarity" in unfinished["error"]

            assert run_row(queued)["attempt"] == 0  # never started
            assert published_run() == good and stored_scores(good) == published_scores
            page = client.get("/api/v1/scores", params={"limit": 1}).json()
            assert page["run_id"] == good
    finally:
        stop_worker(worker)
