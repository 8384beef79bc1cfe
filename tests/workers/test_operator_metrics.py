"""The metrics an operator watches move with real work: the API's `/metrics` and a real worker's
metrics port, on PostgreSQL and Redis. A run posted with an X-Request-ID is trained under that
id in the worker's JSON logs, and every metric the Grafana dashboard queries is exported."""

import json
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.db import get_engine
from app.main import create_app
from tests.conftest import reset_caches
from tests.dashboard_support import Scrape, dashboard_metric_names, exported_names, parse
from tests.helpers import free_port, wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    kill_worker,
    start_worker,
    wait_for_run,
)

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
CPU = (("queue", "cpu"),)


def scrape_api(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


def heartbeat_rows() -> list[dict[str, object]]:
    with get_engine().connect() as connection:
        rows = connection.execute(text("SELECT * FROM worker_heartbeats")).mappings()
        return [dict(row) for row in rows]


def test_api_and_worker_metrics_move_with_the_work(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")  # one manual run, nothing else
    monkeypatch.setenv("OPERATIONS_METRICS_CACHE_SECONDS", "0")
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    monkeypatch.setenv("WORKER_HEARTBEAT_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("LOG_FORMAT", "json")
    reset_caches()
    assert import_csv(DEMO) == 1000
    log = tmp_path / "worker.log"
    worker = None
    with TestClient(create_app()) as api:
        before = scrape_api(api).values
        assert before[("licchavi_broker_up", ())] == 1
        assert before[("licchavi_queue_messages", CPU)] == 0

        # No worker yet: the run's wake-up waits in the queue, and the run waits.
        request_id = "ops-test-0123456789"
        created = api.post(
            "/api/v1/training-runs",
            json={"criteria": ["largely_recommended"]},
            headers={**admin_headers(), "X-Request-ID": request_id},
        )
        assert created.status_code == 202, created.text
        assert created.headers["X-Request-ID"] == request_id
        run_id = created.json()["id"]
        queued = scrape_api(api).values
        assert queued[("licchavi_queue_messages", CPU)] >= 1
        manual = (("status", "queued"), ("trigger", "manual"))
        assert queued[("licchavi_training_runs", manual)] == 1

        worker = start_worker(log=log)
        try:
            base = f"http://127.0.0.1:{port}/metrics"
            wait_for("the worker's metrics port", lambda: _answers(base), 90)
            run = wait_for_run(api, run_id, 180)
            assert run["status"] == "succeeded", run["error"]

            # The wake-up was taken; the run's duration is on both sides.
            wait_for(
                "the queue to empty",
                lambda: scrape_api(api).values[("licchavi_queue_messages", CPU)] == 0,
                30,
            )
            done = scrape_api(api)
            count = ("licchavi_training_run_duration_seconds_count", (("trigger", "manual"),))
            assert done.values[count] == 1
            working = parse(httpx.get(base).text)
            observed = working.values
            succeeded = (("outcome", "succeeded"),)
            assert observed[("licchavi_worker_run_duration_seconds_count", succeeded)] == 1
            assert observed[("licchavi_worker_run_duration_seconds_sum", succeeded)] > 0
            assert observed[("licchavi_worker_lease_renewals_total", (("kind", "run"),))] >= 1
            wake = (("state", "SUCCESS"), ("task", "work.wake"))
            assert observed[("licchavi_worker_tasks_total", wake)] >= 1
            assert observed[("licchavi_worker_heartbeats_total", (("result", "written"),))] >= 1

            # Every metric the dashboard queries is exported by the API or the worker.
            exported = exported_names(done) | exported_names(working)
            assert dashboard_metric_names() <= exported, dashboard_metric_names() - exported

            # The pool process beats, with its host, queue and start time.
            rows = heartbeat_rows()
            assert len(rows) == 1 and rows[0]["queues"] == "cpu" and rows[0]["started_at"]
            name = (("worker", rows[0]["worker"]),)
            alive = done.values[("licchavi_worker_heartbeat_age_seconds", name)]
            assert alive < 5
        finally:
            kill_worker(worker)

        # Killed: its heartbeat stops, and its age grows.
        time.sleep(2.5)
        dead = scrape_api(api).values[("licchavi_worker_heartbeat_age_seconds", name)]
        assert dead >= 2

    # The worker logged the run's training as JSON lines under the request's id.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    of_run = [line for line in lines if line.get("run_id") == run_id]
    assert of_run and all(line["request_id"] == request_id for line in of_run)
    assert any("claimed" in line["message"] for line in of_run)
    with get_engine().connect() as connection:
        stored = connection.execute(
            text("SELECT request_id FROM training_runs WHERE id = :id"), {"id": run_id}
        ).scalar()
    assert stored == request_id


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
