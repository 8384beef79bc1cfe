"""Shared steps of the training tests: synthetic data, a worker process, API calls, DB reads."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from app.comparisons.transfer import import_comparisons
from app.core.db import get_engine
from app.identity.security import create_api_key
from ml.synthetic import SyntheticParams, generate
from tests.helpers import children, stop, wait_for

# Fast leases and sweeps so crash recovery is observable within seconds; every read of the
# scores sees the latest publication.
FAST_RECOVERY = {
    "RUN_LEASE_SECONDS": "3",
    "RUN_RECOVERY_INTERVAL_SECONDS": "0.5",
    "RUN_RESEND_AFTER_SECONDS": "1",
    "RUN_PROGRESS_INTERVAL_SECONDS": "0.3",
    "RUN_CHECKPOINT_EVERY_EPOCHS": "5",
    "RUN_CHECKPOINT_EVERY_SECONDS": "0",
    "AUTO_TRAIN_DELAY_SECONDS": "0.5",
    "SCORES_POINTER_TTL_SECONDS": "0",
}
TERMINAL = {"succeeded", "failed", "cancelled"}


class RedisServer:
    """A private redis-server without persistence: a restart loses every queued message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for("redis-server to answer", client.ping, 20)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def synthetic_csv(directory: Path, *, n_users: int, n_videos: int, n_comparisons: int) -> Path:
    data = generate(
        SyntheticParams(
            n_users=n_users,
            n_videos=n_videos,
            n_comparisons=n_comparisons,
            criteria=["largely_recommended"],
            seed=7,
        )
    )
    return data.write(directory) / "comparisons.csv"


def import_csv(path: Path) -> int:
    return import_comparisons(get_engine(), path).inserted


def admin_headers() -> dict[str, str]:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="test", scopes=["admin"])
        session.commit()
    return {"Authorization": f"Bearer {key}"}


def start_worker(
    extra_env: dict[str, str] | None = None, log: Path | None = None, queues: str = "cpu"
) -> subprocess.Popen[bytes]:
    """A `licchavi worker` process on `queues`; with `log`, its output goes to that file."""
    env = {**os.environ, **(extra_env or {})}
    output = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", queues],
            env=env,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
        )
    finally:
        if output is not None:
            output.close()


def kill_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool processes at once: a machine crash, no clean-up."""
    pids = [worker.pid, *children(worker.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(10)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    pool = children(worker.pid)
    stop(worker)
    for pid in pool:  # a pool process left behind by a killed parent
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_row(run_id: int) -> dict[str, Any]:
    with get_engine().connect() as connection:
        row = connection.execute(
            text("SELECT * FROM training_runs WHERE id = :id"), {"id": run_id}
        ).mappings()
        return dict(row.one())


def wait_for_run(
    client: TestClient | httpx.Client, run_id: int, timeout: float, statuses: set[str] = TERMINAL
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/training-runs/{run_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(f"run {run_id} to reach {sorted(statuses)}", finished, timeout, every=0.3)


def metrics_per_epoch(run_id: int) -> list[tuple[int, int, int]]:
    """(epoch, rows, first attempt) of a run's 'fit' metric, by epoch."""
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT epoch, count(*), min(attempt) FROM training_metrics"
                " WHERE run_id = :run AND name = 'fit' GROUP BY epoch ORDER BY epoch"
            ),
            {"run": run_id},
        ).all()
    return [(int(epoch), int(count), int(attempt)) for epoch, count, attempt in rows]


def published_run(criterion: str = "largely_recommended") -> int | None:
    with get_engine().connect() as connection:
        value = connection.execute(
            text(
                "SELECT p.run_id FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
                " WHERE c.name = :name"
            ),
            {"name": criterion},
        ).scalar()
    return None if value is None else int(value)


def stored_scores(run_id: int) -> dict[str, float]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT v.external_id, g.score FROM global_scores g"
                " JOIN videos v ON v.id = g.video_id WHERE g.run_id = :run"
            ),
            {"run": run_id},
        ).all()
    return {video: score for video, score in rows}


def comparison(
    user: str, video_a: str, video_b: str, score: float, criterion: str = "largely_recommended"
) -> dict[str, Any]:
    return {
        "user_id": user,
        "video_a": video_a,
        "video_b": video_b,
        "criteria_scores": [{"criterion": criterion, "score": score}],
    }
