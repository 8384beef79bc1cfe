"""With the broker down the API still takes comparisons, serves scores and records runs; once a
fresh broker is back (its messages lost), the workers' run recovery wakes those runs again."""

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import create_database, drop_database, reset_caches
from tests.workers.training_support import (
    FAST_RECOVERY,
    RedisServer,
    admin_headers,
    comparison,
    import_csv,
    published_run,
    start_worker,
    stop_worker,
    wait_for_run,
)

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
RUNS = "/api/v1/training-runs"


def test_runs_recorded_while_the_broker_is_down_start_once_it_is_back(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, admin = create_database("licchavi_broker")
    for name, value in FAST_RECOVERY.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CELERY_BROKER_URL", private_redis.url)
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    import_csv(DEMO)
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "true")
    reset_caches()
    worker = start_worker()
    try:
        with TestClient(create_app()) as client:
            headers = admin_headers()
            first = client.post(RUNS, json={}, headers=headers).json()["id"]
            assert wait_for_run(client, first, 120)["status"] == "succeeded"

            private_redis.stop()
            started = time.monotonic()
            posted = client.post(
                "/api/v1/comparisons",
                json=comparison("offline", "yt:a1", "yt:b2", -6),
                headers=headers,
            )
            assert posted.status_code == 201
            created = client.post(RUNS, json={}, headers=headers)
            assert created.status_code == 202
            assert time.monotonic() - started < 10, "writes must not hang on the dead broker"
            manual = created.json()["id"]
            page = client.get("/api/v1/scores").json()
            assert page["run_id"] == first and page["total"] == 100
            ready = client.get("/readyz")  # still serving: ready, degraded, saying why
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["broker"] == "error"
            queued = client.get(RUNS, params={"status": "queued"}).json()["items"]
            assert sorted(run["trigger"] for run in queued) == ["auto", "manual"]
            auto = next(run["id"] for run in queued if run["trigger"] == "auto")
            time.sleep(2)  # sweeps while the broker is down fail; the runs stay queued
            assert client.get(f"{RUNS}/{manual}").json()["status"] == "queued"

            private_redis.start()  # empty: the wake-ups sent before the outage are gone too
            assert wait_for_run(client, manual, 120)["status"] == "succeeded"
            assert wait_for_run(client, auto, 120)["status"] == "succeeded"
            newest = client.get(f"{RUNS}/{published_run()}").json()
            assert newest["id"] in (manual, auto) and newest["n_comparisons"] == 1001
            assert client.get("/api/v1/videos/yt:b2/scores").json()["scores"]
    finally:
        stop_worker(worker)
        from app.core.db import dispose_engine

        dispose_engine()
        drop_database(url, admin)
