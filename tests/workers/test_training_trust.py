"""On PostgreSQL + Redis + a real worker: a run trains with the users trusted at its snapshot,
records how many it used, and its scores change with the marks."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import reset_caches
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    start_worker,
    stop_worker,
    stored_scores,
    wait_for_run,
)

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
RUN = {"criteria": ["largely_recommended"], "solver": "converged", "warm_start": False}


def test_a_run_uses_and_records_the_trusted_users(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    assert import_csv(DEMO) == 1000
    worker = start_worker()
    try:
        with TestClient(create_app()) as client:
            headers = admin_headers()
            first = client.post("/api/v1/training-runs", json=RUN, headers=headers).json()
            plain = wait_for_run(client, first["id"], 180)
            assert plain["status"] == "succeeded", plain["error"]
            assert plain["n_trusted"] == 0

            users = client.get("/api/v1/users", params={"limit": 5}, headers=headers).json()
            marked = [user["user_id"] for user in users["items"][:5]]
            for user in marked:
                assert client.put(f"/api/v1/users/{user}/trust", headers=headers).status_code == 200
            # A trusted user with no comparison does not count: it shapes no voting right.
            client.put("/api/v1/users/outsider/trust", headers=headers)

            second = client.post("/api/v1/training-runs", json=RUN, headers=headers).json()
            trusted = wait_for_run(client, second["id"], 180)
            assert trusted["status"] == "succeeded", trusted["error"]
            assert trusted["n_trusted"] == len(marked) == 5
            assert trusted["data_fingerprint"] != plain["data_fingerprint"]
    finally:
        stop_worker(worker)
    before, after = stored_scores(plain["id"]), stored_scores(trusted["id"])
    assert before.keys() == after.keys()
    assert max(abs(before[video] - after[video]) for video in before) > 1e-3
