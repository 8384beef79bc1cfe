"""Real worker processes: `licchavi serve` on the embedded default supervises its worker, and
`licchavi worker` runs tasks from Redis against PostgreSQL."""

import os
import signal
import subprocess
import sys

import httpx
import pytest
from sqlmodel import Session, select

from app.core.db import get_engine
from app.models import WorkerHeartbeat
from tests.helpers import children, free_port, interrupt, stop, wait_for


def heartbeat_pids() -> set[int]:
    with Session(get_engine()) as session:
        return {row.pid for row in session.exec(select(WorkerHeartbeat)).all()}


def send_heartbeat() -> None:
    from workers.tasks.maintenance import heartbeat

    heartbeat.delay()


def test_serve_on_the_embedded_default_runs_and_restarts_its_worker() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the API to be ready", lambda: httpx.get(f"{base}/readyz").status_code == 200, 90)
        total = httpx.get(f"{base}/api/v1/comparisons", params={"limit": 1}).json()["total"]
        assert total == 1000  # the demo data

        send_heartbeat()
        first_pids = wait_for("the worker to run a task", heartbeat_pids, 90)

        worker_main = children(server.pid)
        assert worker_main, "serve started no worker process"
        os.kill(worker_main[0], signal.SIGKILL)
        wait_for(
            "a restarted worker",
            lambda: children(server.pid) and children(server.pid) != worker_main,
            60,
        )
        send_heartbeat()
        wait_for("the restarted worker to run a task", lambda: heartbeat_pids() - first_pids, 90)
    finally:
        interrupt(server)
    assert server.returncode == 0
    assert children(server.pid) == []


def test_worker_runs_tasks_from_redis_against_postgres(
    monkeypatch: pytest.MonkeyPatch, redis_broker_url: str
) -> None:
    from tests.conftest import create_database, drop_database, reset_caches

    url, admin = create_database("licchavi_worker")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CELERY_BROKER_URL", redis_broker_url)
    reset_caches()
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"])
    try:
        send_heartbeat()
        pids = wait_for("the worker to run a task", heartbeat_pids, 90)
        assert len(pids) == 1
    finally:
        stop(worker)
        from app.core.db import dispose_engine

        dispose_engine()
        drop_database(url, admin)
