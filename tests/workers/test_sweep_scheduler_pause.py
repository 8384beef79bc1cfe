"""Two `licchavi worker` processes on PostgreSQL and Redis: the sweep scheduler's lease holder is
paused (SIGSTOP) while it freezes a holdout sweep's data, past its lease; the other worker takes
over and prepares the sweep; the paused one resumes. The sweep ends with exactly the dry run's
trials and evaluations, and one frozen dataset."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.db import dispose_engine, get_engine
from app.main import create_app
from tests.conftest import (
    create_database,
    drop_database,
    emptied_redis_url,
    reset_caches,
)
from tests.helpers import wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    start_worker,
    stop_worker,
    synthetic_csv,
)

# A scheduler lease of 2 s, so a pause of a few seconds loses it.
PAUSE_ENV = {
    "SWEEP_LEASE_SECONDS": "5",
    "SWEEP_HEARTBEAT_SECONDS": "0.3",
    "SWEEP_SCHEDULER_INTERVAL_SECONDS": "0.2",
    "SWEEP_SCHEDULER_LEASE_SECONDS": "2",
    "SWEEP_RESEND_AFTER_SECONDS": "2",
    "AUTO_TRAIN_ENABLED": "false",
}
# Enough live comparisons that freezing them takes a noticeable while (the window paused).
N_COMPARISONS = 150_000
# The last statement the scheduler runs before it freezes a holdout sweep's data.
SNAPSHOT_LAST_QUERY = "SELECT id, external_id FROM videos"
SPEC = {
    "name": "paused scheduler",
    "method": "grid",
    "parameters": {"w": {"values": [0.5, 2.0]}},
    "repeats": {"seeds": [0]},
    "evaluation": {"kind": "holdout", "folds": 2, "split_by": "comparison", "split_seed": 3},
    "objectives": [{"metric": "heldout_accuracy", "direction": "maximize"}],
    "base": {"epochs": 3, "compute_uncertainty": False},
    "budget": {"max_parallel": 3},
}
FINAL = {"completed", "cancelled", "failed"}


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A fresh database holding the comparisons, two workers, and the API in-process."""
    redis_url = emptied_redis_url()
    url, admin = create_database("licchavi_pause")
    env = {
        **PAUSE_ENV,
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": redis_url,
        "DATA_DIR": str(tmp_path / "data"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    workers = []
    try:
        csv = synthetic_csv(tmp_path, n_users=400, n_videos=15_000, n_comparisons=N_COMPARISONS)
        assert import_csv(csv) == N_COMPARISONS
        # Our own connections closed: the only snapshot reads seen from now on are a worker's.
        dispose_engine()
        workers = [start_worker(env), start_worker(env)]
        with TestClient(create_app()) as client:
            yield {"client": client, "headers": admin_headers(), "workers": workers}
    finally:
        for worker in workers:
            os.kill(worker.pid, signal.SIGCONT)  # (a no-op unless the test failed paused)
            stop_worker(worker)
        dispose_engine()
        drop_database(url, admin)


def scalar(sql: str, **params: Any) -> Any:
    with get_engine().connect() as connection:
        return connection.execute(text(sql), params).scalar()


def lease() -> tuple[str, int] | None:
    with get_engine().connect() as connection:
        row = connection.execute(
            text("SELECT owner, epoch FROM scheduler_leases WHERE name = 'sweeps'")
        ).one_or_none()
    return None if row is None else (str(row.owner), int(row.epoch))


def freezing_backends() -> int:
    """Database sessions whose last statement ended the snapshot read of a preparation."""
    return int(
        scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE :last",
            last=f"%{SNAPSHOT_LAST_QUERY}%",
        )
    )


def test_a_paused_lease_holder_leaves_exactly_the_dry_runs_counts(stack: dict[str, Any]) -> None:
    client, headers = stack["client"], stack["headers"]
    planned = client.post("/api/v1/sweeps?dry_run=true", json=SPEC, headers=headers)
    assert planned.status_code == 200, planned.text
    plan = planned.json()
    assert (plan["n_trials"], plan["n_evaluations"]) == (3, 6)  # 2 grid points + the defaults

    holder = wait_for("a scheduler to hold the lease", lease, 120, every=0.2)
    owner, epoch = holder
    holder_pid = int(owner.split(":")[-2])
    assert holder_pid in {worker.pid for worker in stack["workers"]}

    response = client.post("/api/v1/sweeps", json=SPEC, headers=headers)
    assert response.status_code == 202, response.text
    sweep_id = int(response.json()["id"])
    wait_for("the holder to read the live comparisons", freezing_backends, 60, every=0.005)
    os.kill(holder_pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        # The other worker takes the lease over once it lapses, and prepares the sweep.
        taken = wait_for(
            "another worker to take the lease over",
            lambda: (now := lease()) is not None and now[0] != owner and now,
            60,
            every=0.2,
        )
        assert taken[1] > epoch
        wait_for(
            "the new holder to prepare the sweep",
            lambda: scalar("SELECT status FROM sweeps WHERE id = :s", s=sweep_id) != "preparing",
            120,
            every=0.2,
        )
        # Paused well past its lease, as a stopped VM or a long GC would be.
        time.sleep(max(0.0, 6.0 - (time.monotonic() - paused_at)))
    finally:
        os.kill(holder_pid, signal.SIGCONT)

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/sweeps/{sweep_id}").json()
        return body if body["status"] in FINAL else None

    sweep = wait_for(f"sweep {sweep_id} to end", finished, 300, every=0.5)
    assert sweep["status"] == "completed", sweep
    counted = {
        "datasets": scalar("SELECT count(*) FROM sweep_datasets WHERE sweep_id = :s", s=sweep_id),
        "trials": scalar("SELECT count(*) FROM sweep_trials WHERE sweep_id = :s", s=sweep_id),
        "evaluations": scalar(
            "SELECT count(*) FROM sweep_evaluations WHERE sweep_id = :s", s=sweep_id
        ),
        "baselines": scalar(
            "SELECT count(*) FROM sweep_trials WHERE sweep_id = :s AND source = 'baseline'",
            s=sweep_id,
        ),
    }
    assert counted == {
        "datasets": 1,
        "trials": plan["n_trials"],
        "evaluations": plan["n_evaluations"],
        "baselines": 1,
    }
    assert (
        scalar(
            "SELECT count(*) FROM sweep_evaluations WHERE sweep_id = :s AND status = 'succeeded'",
            s=sweep_id,
        )
        == plan["n_evaluations"]
    )
    # The paused worker is alive and back to following.
    assert all(worker.poll() is None for worker in stack["workers"])
