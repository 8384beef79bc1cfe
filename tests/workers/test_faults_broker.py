"""Broker outages at chosen and random moments of a busy worker's life (as it claims a run, while
it trains, as it acknowledges the finished run): the worker process survives every one, and the
runs queued meanwhile start once Redis is back."""

import random
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import reset_caches
from tests.helpers import wait_for
from tests.workers.training_support import (
    RedisServer,
    admin_headers,
    comparison,
    import_csv,
    run_row,
    start_worker,
    stop_worker,
    synthetic_csv,
    wait_for_run,
)

pytestmark = pytest.mark.faults

RUNS = "/api/v1/training-runs"
SEED = 11
# Each moment once, then random ones; the seed makes a failure replayable.
MOMENTS = ["claim", "ack", "mid-run", "random", "ack"]
# A few seconds of training, so an outage can fall inside a run.
RUN = {"config": {"epochs": 300, "precision": 1.0}, "warm_start": False}


def test_a_busy_worker_survives_broker_outages_and_resumes_queued_runs(
    postgres_and_private_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    broker = postgres_and_private_redis
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    import_csv(synthetic_csv(tmp_path, n_users=40, n_videos=200, n_comparisons=3_000))
    # Auto runs on: each write below queues one with a countdown wake-up, so outages also hit
    # wake-ups the worker holds for later.
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "true")
    monkeypatch.setenv("AUTO_TRAIN_DELAY_SECONDS", "2")
    reset_caches()
    log = tmp_path / "worker.log"
    worker = start_worker(log=log)
    rng = random.Random(SEED)
    try:
        with TestClient(create_app()) as client:
            headers = admin_headers()
            started = time.monotonic()
            first = client.post(RUNS, json=RUN, headers=headers).json()["id"]
            assert wait_for_run(client, first, 120)["status"] == "succeeded"
            duration = time.monotonic() - started
            for number, moment in enumerate(MOMENTS):
                busy = client.post(RUNS, json=RUN, headers=headers).json()["id"]
                written = client.post(
                    "/api/v1/comparisons",
                    json=comparison(f"outage-{number}", "yt:v1", f"yt:w{number}", 3),
                    headers=headers,
                )
                assert written.status_code == 201, written.text
                if moment == "claim":
                    wait_for(
                        "the claim", lambda busy=busy: run_row(busy)["status"] != "queued", 60, 0.01
                    )
                elif moment == "ack":  # published, then acknowledged to the broker
                    wait_for(
                        "the publication", lambda busy=busy: run_row(busy)["finished_at"], 90, 0.01
                    )
                else:
                    wait_for("the claim", lambda busy=busy: run_row(busy)["status"] != "queued", 60)
                    bound = duration / 2 if moment == "mid-run" else duration * 1.2
                    time.sleep(rng.uniform(0, bound))
                broker.stop()
                queued = client.post(RUNS, json=RUN, headers=headers)
                assert queued.status_code == 202, queued.text
                time.sleep(rng.uniform(0.5, 6))
                broker.start()
                back = time.monotonic()
                waiting = queued.json()["id"]
                wait_for(
                    "the run queued during the outage to start",
                    lambda waiting=waiting: run_row(waiting)["status"] != "queued",
                    120,
                )
                print(
                    f"outage {number} ({moment}): queued run started {time.monotonic() - back:.1f} s after"
                )
                assert wait_for_run(client, busy, 120)["status"] == "succeeded"
                assert wait_for_run(client, waiting, 120)["status"] == "succeeded"
                assert worker.poll() is None, f"the worker died in outage {number} ({moment})"
            # Every run, the auto runs queued by the writes included, finishes exactly once.
            for run in client.get(RUNS, params={"limit": 100}).json()["items"]:
                assert wait_for_run(client, run["id"], 120)["status"] == "succeeded"
        assert "Unrecoverable error" not in log.read_text()
    finally:
        stop_worker(worker)
