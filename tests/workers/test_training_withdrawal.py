"""A criterion whose last comparison is deleted stops being served: the auto run that follows
publishes it empty instead of failing, on PostgreSQL + Redis with a real worker."""

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import reset_caches
from tests.helpers import wait_for
from tests.workers.training_support import (
    admin_headers,
    comparison,
    published_run,
    start_worker,
    stop_worker,
    wait_for_run,
)

PAIRS = [("ann", "yt:a", "yt:b", 4), ("ann", "yt:b", "yt:c", -2), ("bob", "yt:a", "yt:c", 6)]


def test_deleting_a_criterions_last_comparison_withdraws_its_scores(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "true")
    reset_caches()
    worker = start_worker()
    try:
        with TestClient(create_app()) as client:
            headers = admin_headers()
            for pair in PAIRS:
                posted = client.post(
                    "/api/v1/comparisons",
                    json=comparison(*pair, criterion="importance"),
                    headers=headers,
                )
                assert posted.status_code == 201, posted.text
            page = wait_for(
                "importance scores to be published",
                lambda: (
                    (p := client.get("/api/v1/scores?criterion=importance").json())["total"] == 3
                    and p
                ),
                120,
            )
            trained = page["run_id"]

            for user, a, b, _score in PAIRS:
                deleted = client.delete(f"/api/v1/comparisons/{user}/{a}/{b}", headers=headers)
                assert deleted.status_code == 204, deleted.text
            withdrawn = wait_for(
                "a later run to publish importance without scores",
                lambda: (
                    (p := client.get("/api/v1/scores?criterion=importance").json())["run_id"]
                    != trained
                    and p
                ),
                120,
            )
            assert (withdrawn["items"], withdrawn["total"]) == ([], 0)
            run = wait_for_run(client, withdrawn["run_id"], 30)
            assert (run["status"], run["trigger"]) == ("succeeded", "auto")
            assert published_run("importance") == withdrawn["run_id"]
            assert client.get("/api/v1/videos/yt:a/scores").json()["scores"] == []

            # A manual run of a criterion with neither comparisons nor scores still fails, saying
            # why; one that only has scores left withdraws them like the auto run.
            created = client.post(
                "/api/v1/training-runs", json={"criteria": ["importance"]}, headers=headers
            )
            assert created.status_code == 202, created.text
            again = wait_for_run(client, created.json()["id"], 60)
            assert again["status"] == "succeeded", again["error"]
            created = client.post(
                "/api/v1/training-runs", json={"criteria": ["largely_recommended"]}, headers=headers
            )
            nothing = wait_for_run(client, created.json()["id"], 60)
            assert nothing["status"] == "failed"
            assert "no comparisons for criterion largely_recommended" in nothing["error"]
    finally:
        stop_worker(worker)
