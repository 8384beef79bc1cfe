"""The embedded default under concurrent writers: `licchavi serve` (SQLite database and broker,
its supervised worker) stores every write from many threads at once, keys checked among them,
while the worker trains the auto runs they trigger and records a failing run's failure."""

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.helpers import free_port, stop, wait_for
from tests.workers.training_support import admin_headers, comparison, wait_for_run

WRITERS = 16
WRITES_EACH = 30
# A writer changes to a key never verified every few writes, so key checks in the database keep
# coming while the single-write slots are busy (the mix that locked the API up).
WRITES_PER_KEY = 5
EMPTY = "never_compared"


def runs_ended(client: httpx.Client) -> dict[str, int] | None:
    """The count of runs by status once none is queued or running; None before."""
    counts: dict[str, int] = {}
    for run in client.get("/api/v1/training-runs", params={"limit": 1000}).json()["items"]:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    return counts if counts.keys() <= {"succeeded", "failed"} else None


def test_concurrent_writers_all_succeed_and_the_worker_records_every_run() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env={**os.environ, "AUTO_TRAIN_DELAY_SECONDS": "0.2"},
    )
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            wait_for("the API to be ready", lambda: client.get("/readyz").status_code == 200, 90)
            keys = [admin_headers() for _ in range(WRITERS * WRITES_EACH // WRITES_PER_KEY)]
            created = client.post("/api/v1/criteria", json={"name": EMPTY}, headers=keys[0])
            assert created.status_code == 201, created.text

            def writer(number: int) -> list[tuple[int, str]]:
                answers = []
                with httpx.Client(base_url=base, timeout=120) as own:
                    for index in range(WRITES_EACH):
                        key = keys[(number * WRITES_EACH + index) // WRITES_PER_KEY]
                        answer = own.post(
                            "/api/v1/comparisons",
                            json=comparison(f"w{number}-{index}", f"yt:a{index}", "yt:b", 1),
                            headers=key,
                        )
                        answers.append((answer.status_code, answer.text[:200]))
                return answers

            def failing_run() -> dict[str, Any]:
                answer = client.post(
                    "/api/v1/training-runs", json={"criteria": [EMPTY]}, headers=keys[0]
                )
                assert answer.status_code == 202, answer.text
                return dict(answer.json())

            with ThreadPoolExecutor(WRITERS + 1) as pool:
                writes = [pool.submit(writer, number) for number in range(WRITERS)]
                doomed = pool.submit(failing_run)
                answers = [answer for future in writes for answer in future.result()]
                doomed_run = doomed.result()

            assert [a for a in answers if a[0] != 201] == []
            total = client.get("/api/v1/comparisons", params={"limit": 1}).json()["total"]
            assert total == WRITERS * WRITES_EACH

            failed = wait_for_run(client, doomed_run["id"], 120)
            assert failed["status"] == "failed" and EMPTY in failed["error"]
            settled = wait_for("every run to end", lambda: runs_ended(client), 180, every=0.5)
            assert settled["failed"] == 1 and settled["succeeded"] >= 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            stop(server)
            raise AssertionError("`licchavi serve` did not stop within 30 s of SIGINT") from None
    assert code == 0
