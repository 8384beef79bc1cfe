"""Signals to the service's processes: SIGTERM to a worker mid-run hands the run off at once from
a fresh checkpoint, and mid-evaluation hands the sweep evaluation back at once; SIGTERM or SIGKILL
to `licchavi serve` leaves none of its processes behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.db import get_engine
from app.main import create_app
from tests.conftest import reset_caches
from tests.helpers import children, free_port, stop, wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    metrics_per_epoch,
    run_row,
    start_worker,
    stop_worker,
    synthetic_csv,
    wait_for_run,
)

pytestmark = pytest.mark.faults

EPOCHS = 1500


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def checkpoints(run_id: int) -> list[int]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text("SELECT epoch FROM model_states WHERE run_id = :run AND is_checkpoint"),
            {"run": run_id},
        ).all()
    return [int(row[0]) for row in rows]


def test_sigterm_to_a_worker_mid_run_checkpoints_and_hands_the_run_off(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Production cadence: a 60 s lease and checkpoints at most every 30 s. Without a hand-off the
    # run would wait for its lease to expire and restart from whatever checkpoint it had.
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("RUN_LEASE_SECONDS", "60")
    monkeypatch.setenv("RUN_CHECKPOINT_EVERY_EPOCHS", "10")
    monkeypatch.setenv("RUN_CHECKPOINT_EVERY_SECONDS", "30")
    reset_caches()
    import_csv(synthetic_csv(tmp_path, n_users=100, n_videos=500, n_comparisons=10_000))
    first = start_worker()
    second = None
    try:
        with TestClient(create_app()) as client:
            created = client.post(
                "/api/v1/training-runs",
                json={
                    "config": {"solver": "faithful", "epochs": EPOCHS, "precision": 1.0},
                    "warm_start": False,
                },
                headers=admin_headers(),
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            # The first checkpoint comes after the first 10 epochs, not after 30 s.
            wait_for("a first checkpoint", lambda: checkpoints(run_id), 120, 0.1)
            wait_for("training to go on", lambda: run_row(run_id)["epoch"] > 50, 120, 0.1)
            pool = children(first.pid)
            first.send_signal(signal.SIGTERM)
            first.wait(60)  # a warm shutdown that does not wait for the run to end
            assert first.returncode == 0
            assert not any(alive(pid) for pid in pool)
            handed = run_row(run_id)
            assert handed["status"] == "running" and handed["attempt"] == 1
            assert handed["lease_owner"] is None  # its lease ended with the hand-off
            stopped_at = max(checkpoints(run_id))
            assert 50 < stopped_at < EPOCHS and stopped_at >= handed["epoch"]

            second = start_worker()
            run = wait_for_run(client, run_id, 180)
            assert run["status"] == "succeeded", run["error"]
            assert run["attempt"] == 2 and run["epoch"] == EPOCHS
        per_epoch = metrics_per_epoch(run_id)
        # Each epoch's metrics once: the second attempt resumed where the first one stopped.
        assert [row[0] for row in per_epoch] == list(range(1, EPOCHS + 1))
        assert all(count == 1 for _epoch, count, _attempt in per_epoch)
        attempts = {epoch: attempt for epoch, _count, attempt in per_epoch}
        assert all(attempts[e] == 1 for e in range(1, stopped_at + 1))
        assert all(attempts[e] == 2 for e in range(stopped_at + 1, EPOCHS + 1))
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)


def start_serve(port: int) -> subprocess.Popen[bytes]:
    with Path("serve.log").open("ab") as log:  # in the test's directory
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--demo"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def serve_with_worker(port: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`licchavi serve` on the embedded default, once its worker and pool process are up."""
    server = start_serve(port)
    base = f"http://127.0.0.1:{port}"
    wait_for("the API to be ready", lambda: httpx.get(f"{base}/readyz").status_code == 200, 90)
    # The worker's main process and its pool process.
    started = wait_for("the worker's pool", lambda: len(descendants(server.pid)) >= 2 or None, 90)
    assert started
    return server, descendants(server.pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_serve_stopped_by_a_signal_leaves_no_process_behind(signum: int) -> None:
    server, started = serve_with_worker(free_port())
    try:
        server.send_signal(signum)
        server.wait(60)
        if signum != signal.SIGKILL:
            assert server.returncode == 0
        # Killed outright, serve cannot stop anything: its worker notices its death.
        wait_for(
            "every process serve started to exit",
            lambda: not any(alive(pid) for pid in started),
            60,
        )
    finally:
        stop(server)
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_serve_stopped_mid_run_hands_the_run_to_the_next_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded default end to end: SQLite, the embedded broker, the worker beside the API."""
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("RUN_CHECKPOINT_EVERY_SECONDS", "30")
    reset_caches()
    port = free_port()
    server, started = serve_with_worker(port)
    try:
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/training-runs",
            json={
                "config": {"solver": "faithful", "epochs": 20_000, "precision": 1.0},
                "warm_start": False,
            },
            headers=admin_headers(),
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]
        wait_for("training to go on", lambda: run_row(run_id)["epoch"] > 30, 120, 0.1)
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        assert server.returncode == 0
        wait_for("serve's processes to exit", lambda: not any(map(alive, started)), 60)
        handed = run_row(run_id)
        assert handed["status"] == "running" and handed["lease_owner"] is None
        stopped_at = max(checkpoints(run_id))
        assert 30 < stopped_at < 20_000

        server, started = serve_with_worker(port)  # one worker again, which resumes the run
        wait_for("the run to resume", lambda: run_row(run_id)["attempt"] == 2, 120, 0.2)
        assert len(descendants(server.pid)) == 2  # the new worker and its pool process
        per_epoch = metrics_per_epoch(run_id)
        assert all(count == 1 for _epoch, count, _attempt in per_epoch)
        assert {attempt for epoch, _c, attempt in per_epoch if epoch <= stopped_at} == {1}
        assert {attempt for epoch, _c, attempt in per_epoch if epoch > stopped_at} <= {2}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# One evaluation long enough to be stopped in the middle (the second worker never finishes it).
LONG_EVALUATION = {
    "name": "handed back",
    "method": "grid",
    "parameters": {"w": {"values": [1.0]}},
    "repeats": {"seeds": [0]},
    "evaluation": {
        "kind": "synthetic",
        "generator": {"n_users": 50, "n_videos": 300, "comps_per_video": 10},
    },
    "objectives": [{"metric": "spearman", "direction": "maximize"}],
    "base": {"solver": "faithful", "epochs": 100_000, "compute_uncertainty": False},
}


def evaluation_row(sweep_id: int) -> dict[str, Any] | None:
    with get_engine().connect() as connection:
        row = connection.execute(
            text(
                "SELECT id, status, attempt, lease_owner, progress FROM sweep_evaluations"
                " WHERE sweep_id = :sweep"
            ),
            {"sweep": sweep_id},
        ).mappings()
        found = row.one_or_none()
    return None if found is None else dict(found)


def test_sigterm_to_a_worker_mid_evaluation_hands_the_evaluation_back_at_once(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease far longer than the test: only a hand-back frees the evaluation in time.
    monkeypatch.setenv("SWEEP_LEASE_SECONDS", "3600")
    monkeypatch.setenv("SWEEP_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("SWEEP_SCHEDULER_INTERVAL_SECONDS", "0.5")
    reset_caches()
    first = start_worker()
    second = None
    try:
        with TestClient(create_app()) as client:
            created = client.post("/api/v1/sweeps", json=LONG_EVALUATION, headers=admin_headers())
            assert created.status_code == 202, created.text
            sweep_id = int(created.json()["id"])

            def training(attempt: int) -> dict[str, Any] | None:
                row = evaluation_row(sweep_id)
                busy = row is not None and row["status"] == "running" and row["progress"] > 0
                return row if busy and row is not None and row["attempt"] == attempt else None

            running = wait_for("the evaluation to train", lambda: training(1), 180, 0.1)
            first.send_signal(signal.SIGTERM)
            first.wait(60)  # a warm shutdown that does not wait for the evaluation to end
            assert first.returncode == 0
            handed = evaluation_row(sweep_id)
            assert handed is not None
            assert (handed["status"], handed["attempt"], handed["lease_owner"]) == (
                "queued",
                1,
                None,
            )
            with get_engine().connect() as connection:
                details = connection.execute(
                    text("SELECT detail FROM sweep_events WHERE evaluation_id = :id"),
                    {"id": running["id"]},
                ).scalars()
                assert "handed back: worker stopping" in list(details)

            second = start_worker()
            taken = wait_for("another worker to take it over", lambda: training(2), 180, 0.1)
            assert taken["lease_owner"] != running["lease_owner"]
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
