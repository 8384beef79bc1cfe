"""End to end on PostgreSQL + Redis + a real worker: import → run → poll → scores; then a new
comparison triggers an auto run whose publication readers see atomically."""

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from ml.config import LicchaviConfig
from tests.conftest import reset_caches
from tests.helpers import wait_for
from tests.workers.training_support import (
    admin_headers,
    comparison,
    import_csv,
    published_run,
    start_worker,
    stop_worker,
    stored_scores,
    wait_for_run,
)

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"


class Reader(threading.Thread):
    """Reads the whole ranking over and over, keeping what every response said."""

    def __init__(self, app: Any) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.stopping = threading.Event()
        self.pages: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with TestClient(self.app) as client:
            while not self.stopping.is_set():
                response = client.get("/api/v1/scores", params={"limit": 1000})
                if response.status_code != 200:
                    self.errors.append(response.text)
                    continue
                self.pages.append(response.json())


def test_run_trains_publishes_and_a_new_comparison_refreshes_scores_atomically(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")  # the import itself schedules nothing
    reset_caches()
    assert import_csv(DEMO) == 1000
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "true")
    reset_caches()
    worker = start_worker()
    app = create_app()
    try:
        with TestClient(app) as client:
            headers = admin_headers()
            assert client.get("/api/v1/scores").json() == {
                "items": [],
                "total": 0,
                "limit": 50,
                "offset": 0,
                "criterion": "largely_recommended",
                "run_id": None,
            }
            created = client.post(
                "/api/v1/training-runs",
                json={"criteria": ["largely_recommended"]},
                headers={**headers, "Idempotency-Key": "first-run"},
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            assert created.headers["Location"] == f"/api/v1/training-runs/{run_id}"

            run = wait_for_run(client, run_id, 120)
            assert run["status"] == "succeeded", run["error"]
            assert (run["progress"], run["attempt"], run["n_comparisons"]) == (1.0, 1, 1000)
            assert len(run["data_fingerprint"]) == 64
            assert set(run["metrics"]["largely_recommended"]) >= {"fit", "s", "gen", "reg"}

            page = client.get("/api/v1/scores", params={"limit": 1000}).json()
            assert page["run_id"] == run_id and page["total"] == 100 == len(page["items"])
            scores = [item["score"] for item in page["items"]]
            assert scores == sorted(scores, reverse=True)
            assert {i["video_id"]: i["score"] for i in page["items"]} == stored_scores(run_id)
            epochs = [
                m["epoch"]
                for m in client.get(f"/api/v1/training-runs/{run_id}/metrics").json()["items"]
            ]
            assert epochs == list(range(1, run["epoch"] + 1))

            # A new comparison: a debounced auto run, warm-started, publishes it.
            reader = Reader(app)
            reader.start()
            posted = client.post(
                "/api/v1/comparisons",
                json=comparison("newcomer", "yt:fresh_one", "yt:fresh_two", 8),
                headers=headers,
            )
            assert posted.status_code == 201
            wait_for("an auto run to publish", lambda: published_run() not in (None, run_id), 120)
            wait_for(
                "a read of the new run",
                lambda: reader.pages and reader.pages[-1]["run_id"] != run_id,
                30,
            )
            reader.stopping.set()
            reader.join(30)

            auto_id = published_run()
            auto = client.get(f"/api/v1/training-runs/{auto_id}").json()
            assert (auto["trigger"], auto["warm_start"], auto["n_comparisons"]) == (
                "auto",
                True,
                1001,
            )
            # One new pair in a thousand: the default (converged) solver, warm-started from the
            # published state, needs fewer Newton iterations than the cold run, within its cap.
            assert auto["max_epochs"] == LicchaviConfig().max_iterations
            assert 1 <= auto["epoch"] < run["epoch"]
            assert auto["data_fingerprint"] != run["data_fingerprint"]
            fresh = client.get("/api/v1/videos/yt:fresh_two/scores").json()["scores"]
            assert [(s["criterion"], s["run_id"]) for s in fresh] == [
                ("largely_recommended", auto_id)
            ]
            mine = client.get("/api/v1/users/newcomer/scores", headers=headers).json()
            assert {i["video_id"] for i in mine["items"]} == {"yt:fresh_one", "yt:fresh_two"}
            assert client.get("/api/v1/users/newcomer/scores").status_code == 401

            # Every response came from exactly one run and showed all of that run's scores.
            assert not reader.errors
            seen = {page["run_id"] for page in reader.pages}
            assert seen == {run_id, auto_id}
            expected = {run_id: stored_scores(run_id), auto_id: stored_scores(auto_id)}
            for page in reader.pages:
                assert {item["run_id"] for item in page["items"]} == {page["run_id"]}
                assert {i["video_id"]: i["score"] for i in page["items"]} == expected[
                    page["run_id"]
                ]
                assert page["total"] == len(expected[page["run_id"]])
    finally:
        stop_worker(worker)
