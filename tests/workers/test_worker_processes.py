"""Real worker processes: `licchavi serve` on the embedded default supervises its worker, and
`licchavi worker` runs tasks from Redis against PostgreSQL. Each pool process's heartbeat row
(written by the process itself) says which processes are alive."""

import os
import signal
import subprocess
import sys

import httpx
import pytest
from sqlmodel import Session, select

from app.core.db import get_engine
from app.models import WorkerHeartbeat
from app.runs.wakeups import wake_workers
from tests.dashboard_support import parse
from tests.helpers import children, free_port, interrupt, stop, wait_for


def heartbeat_pids() -> set[int]:
    with Session(get_engine()) as session:
        return {row.pid for row in session.exec(select(WorkerHeartbeat)).all()}


def pool_pids(worker_pid: int) -> set[int]:
    return set(children(worker_pid))


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

        worker_main = children(server.pid)
        assert worker_main, "serve started no worker process"
        # The heartbeat comes from the worker's pool process.
        first_pids = wait_for("the worker's heartbeat", heartbeat_pids, 90)
        assert first_pids == pool_pids(worker_main[0])

        os.kill(worker_main[0], signal.SIGKILL)
        wait_for(
            "a restarted worker",
            lambda: children(server.pid) and children(server.pid) != worker_main,
            60,
        )
        # The killed worker's row stays (its age grows); the restarted one's pool beats anew.
        new_pids = wait_for(
            "the restarted worker's heartbeat", lambda: heartbeat_pids() - first_pids, 90
        )
        assert new_pids == pool_pids(children(server.pid)[0])
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
    port = free_port()
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    try:
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"])
        try:
            pids = wait_for("the worker's heartbeat", heartbeat_pids, 90)
            assert pids == pool_pids(worker.pid)
            # A wake-up through Redis runs in the pool process, as the worker's metrics count.
            wake_workers(reason="test")
            wait_for("the worker to run the task", lambda: ran_wakeups(port), 90)
        finally:
            stop(worker)
        # Stopped cleanly, its pool process deleted its heartbeat: it is not a missing worker.
        assert heartbeat_pids() == set()
    finally:
        from app.core.db import dispose_engine

        dispose_engine()
        drop_database(url, admin)


def ran_wakeups(port: int) -> float:
    """Wake-up tasks the worker on `port` ran to success, as its metrics say."""
    try:
        scrape = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
    except httpx.HTTPError:
        return 0.0
    done = ("licchavi_worker_tasks_total", (("state", "SUCCESS"), ("task", "work.wake")))
    return scrape.values.get(done, 0.0)
