"""A worker that consumes only the `gpu` queue (compose's `worker-gpu`) is woken for work: wake-ups
go to the `gpu` queue too while a live worker's heartbeat lists it, and to no queue nobody reads."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.db import get_engine
from app.main import create_app
from app.runs.service import new_run
from app.runs.wakeups import GPU_QUEUE, gpu_workers_alive, undelivered
from ml.config import LicchaviConfig
from tests.conftest import reset_caches
from tests.helpers import children, wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    published_run,
    start_worker,
    stop_worker,
    synthetic_csv,
    wait_for_run,
)
from workers.celery_app import celery_app


def gpu_queue_messages() -> int:
    with celery_app.producer_or_acquire() as producer:
        return undelivered(producer.channel, GPU_QUEUE)


def test_a_worker_on_the_gpu_queue_alone_trains_a_run(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("WORKER_HEARTBEAT_INTERVAL_SECONDS", "1")
    reset_caches()
    assert import_csv(synthetic_csv(tmp_path, n_users=30, n_videos=60, n_comparisons=400)) == 400
    # No GPU worker yet: nothing is sent to a queue that nobody reads.
    assert not gpu_workers_alive()
    worker = start_worker(queues=GPU_QUEUE)
    try:
        reset_caches()
        wait_for("the gpu worker's heartbeat", gpu_workers_alive, 60)
        with TestClient(create_app()) as client:
            created = client.post(
                "/api/v1/training-runs", json={"config": {}}, headers=admin_headers()
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            run = wait_for_run(client, run_id, 120)
        assert run["status"] == "succeeded", run["error"]
        assert published_run() == run_id
    finally:
        stop_worker(worker)
    assert gpu_queue_messages() == 0


def test_a_run_asking_for_cuda_waits_for_a_worker_on_the_gpu_queue(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A CPU-only worker leaves a `device: cuda` run queued (it would fail there) and trains the
    others; the worker that reads the gpu queue is the one that takes it."""
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("WORKER_HEARTBEAT_INTERVAL_SECONDS", "1")
    reset_caches()
    assert import_csv(synthetic_csv(tmp_path, n_users=30, n_videos=60, n_comparisons=400)) == 400
    with Session(get_engine()) as session:  # as queued while a GPU worker was alive
        run = new_run(
            criteria=None, config=LicchaviConfig(device="cuda"), trigger="manual", warm_start=False
        )
        session.add(run)
        session.commit()
        cuda_run = run.id
    cpu_worker = start_worker(queues="cpu")
    gpu_worker = None
    try:
        with TestClient(create_app()) as client:
            created = client.post(
                "/api/v1/training-runs", json={"config": {"device": "cpu"}}, headers=admin_headers()
            )
            assert created.status_code == 202, created.text
            done = wait_for_run(client, created.json()["id"], 120)
            assert done["status"] == "succeeded", done["error"]
            # The CPU worker has been woken for both and trained one: the other still waits.
            assert client.get(f"/api/v1/training-runs/{cuda_run}").json()["status"] == "queued"
            gpu_worker = start_worker(queues=GPU_QUEUE)
            ended = wait_for_run(client, cuda_run, 120)
            (criterion,) = ended["criteria_progress"]
        owner_pid = int(criterion["worker"].split(":")[1])
        assert owner_pid in [*children(gpu_worker.pid), gpu_worker.pid]
    finally:
        stop_worker(cpu_worker)
        if gpu_worker is not None:
            stop_worker(gpu_worker)
