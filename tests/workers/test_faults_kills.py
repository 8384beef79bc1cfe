"""SIGKILL and SIGTERM of the API and of the worker at random moments, while comparisons are
written and runs train: every acknowledged write is stored once, every run finishes exactly once
(each epoch's metrics once), and no process is left behind."""

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.core.db import get_engine
from tests.conftest import reset_caches
from tests.helpers import children, free_port, stop, wait_for
from tests.workers.test_faults_signals import alive
from tests.workers.training_support import (
    admin_headers,
    comparison,
    import_csv,
    metrics_per_epoch,
    start_worker,
    stop_worker,
    synthetic_csv,
)

pytestmark = pytest.mark.faults

SEED = 5
FAULTS = 6
RUN = {"config": {"epochs": 200, "precision": 1.0}, "warm_start": False}


class Api:
    """`licchavi serve --no-worker` on the test's PostgreSQL and Redis."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--no-worker"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("the API", lambda: httpx.get(f"{self.base}/readyz").status_code == 200, 90)
        return self.process


class Writer(threading.Thread):
    """Writes new comparisons one by one (a failed request is retried as is: an upsert), and asks
    for a training run every few writes (with an Idempotency-Key, retried likewise)."""

    def __init__(self, api: Api, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.headers = headers
        self.stopping = threading.Event()
        self.attempted: set[str] = set()
        self.acknowledged: set[str] = set()
        self.runs: set[int] = set()
        self.run_requests = 0

    def _post(self, path: str, body: object, headers: dict[str, str]) -> httpx.Response | None:
        while not self.stopping.is_set():
            try:
                response = httpx.post(f"{self.api.base}{path}", json=body, headers=headers)
            except httpx.HTTPError:
                time.sleep(0.2)  # the API is down: try the same request again
                continue
            if response.status_code < 500:
                return response
            time.sleep(0.2)
        return None

    def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            number += 1
            video = f"yt:fault{number}"
            self.attempted.add(video)
            body = comparison(f"faults{number % 7}", "yt:v1", video, number % 10)
            response = self._post("/api/v1/comparisons", body, self.headers)
            if response is not None:
                assert response.status_code in (200, 201), response.text
                self.acknowledged.add(video)
            if number % 15 == 0:
                headers = {**self.headers, "Idempotency-Key": f"faults-run-{number}"}
                self.run_requests += 1
                created = self._post("/api/v1/training-runs", RUN, headers)
                if created is not None:
                    assert created.status_code in (200, 202), created.text
                    self.runs.add(int(created.json()["id"]))


@pytest.mark.timeout(600)
def test_random_kills_and_stops_of_api_and_worker_lose_and_double_nothing(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    import_csv(synthetic_csv(tmp_path, n_users=40, n_videos=200, n_comparisons=3_000))
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "true")
    reset_caches()
    rng = random.Random(SEED)
    api = Api()
    started: list[int] = []
    processes = {"api": api.start(), "worker": start_worker(log=tmp_path / "worker.log")}
    writer = Writer(api, admin_headers())
    writer.start()
    try:
        for _ in range(FAULTS):
            time.sleep(rng.uniform(0.5, 4))
            victim = rng.choice(["api", "worker"])
            signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
            process = processes[victim]
            pool = children(process.pid)
            started += [process.pid, *pool]
            print(f"{signal.Signals(signum).name} to the {victim}")
            # Only the worker's main process: its pool processes must notice by themselves.
            process.send_signal(signum)
            process.wait(90)
            wait_for("the pool to follow", lambda pool=pool: not any(map(alive, pool)), 60)
            processes[victim] = api.start() if victim == "api" else start_worker()
        time.sleep(2)
        writer.stopping.set()
        writer.join(30)

        def all_finished() -> bool:
            with get_engine().connect() as connection:
                return not connection.execute(
                    text("SELECT count(*) FROM training_runs WHERE status IN ('queued','running')")
                ).scalar()

        wait_for("every run to finish", all_finished, 180, 0.5)
        with get_engine().connect() as connection:
            stored = connection.execute(
                text(
                    "SELECT v.external_id, count(*) FROM comparisons c"
                    " JOIN videos v ON v.id = c.video_b_id OR v.id = c.video_a_id"
                    " WHERE v.external_id LIKE 'yt:fault%' GROUP BY v.external_id"
                )
            ).all()
            runs = connection.execute(text("SELECT id, status, epoch FROM training_runs")).all()
            manual = {
                int(row[0])
                for row in connection.execute(
                    text("SELECT id FROM training_runs WHERE trigger = 'manual'")
                )
            }
        counts = dict(stored)
        assert writer.acknowledged and writer.runs
        assert writer.acknowledged <= set(counts) <= writer.attempted
        assert all(count == 1 for count in counts.values())
        # A request retried after a kill (same Idempotency-Key) never makes a second run.
        assert writer.runs <= manual and len(manual) <= writer.run_requests
        for run_id, status, epoch in runs:
            assert status == "succeeded", (run_id, status)
            per_epoch = metrics_per_epoch(run_id)
            assert [row[0] for row in per_epoch] == list(range(1, epoch + 1)), run_id
            assert all(count == 1 for _epoch, count, _attempt in per_epoch), run_id
    finally:
        writer.stopping.set()
        stop(processes["api"])
        stop_worker(processes["worker"])
        started += [processes["api"].pid, processes["worker"].pid]
    left = [pid for pid in started if alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
