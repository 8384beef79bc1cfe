"""Concurrent writers on the embedded default: `licchavi serve` (SQLite database, SQLite broker, a
worker beside the API) on a fresh data directory, under 32 closed-loop writers and then an open
loop at a fixed rate; every write from a new user. Meanwhile a run that must fail is started, and
afterwards every run must have ended and been recorded, and the server must stop promptly."""

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from bench.open_loop import _Connection, open_loop, post_request, run
from bench.stack import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
CRITERION = "largely_recommended"
EMPTY_CRITERION = "bench_never_compared"  # a run on it fails: it has no comparisons
VIDEOS = 2_000
T = TypeVar("T")


def embedded_env(data_dir: Path) -> dict[str, str]:
    """The environment of a default deployment: no database or broker URL, only a data dir."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL")
    }
    env.update(
        DATA_DIR=str(data_dir),
        ENVIRONMENT="production",
        SECRET_KEY="bench-" + "x" * 32,
        LOG_LEVEL="WARNING",
    )
    return env


def licchavi(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"licchavi {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class Writes:
    """Request bytes of single writes, each from a user never seen before."""

    def __init__(self, host: str, key: str, seed: int = 0) -> None:
        self.host = host
        self.headers = {"Authorization": f"Bearer {key}"}
        self.random = random.Random(seed)
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        a, b = self.random.sample(range(VIDEOS), 2)
        body = {
            "user_id": f"user{self.count}-{self.random.getrandbits(32):08x}",
            "video_a": f"yt:v{a}",
            "video_b": f"yt:v{b}",
            "criteria_scores": [{"criterion": CRITERION, "score": self.random.randint(-10, 10)}],
        }
        return post_request(
            self.host, "/api/v1/comparisons", json.dumps(body).encode(), self.headers
        )


async def closed_loop(
    host: str, port: int, writes: Writes, *, writers: int, seconds: float, timeout: float
) -> dict[str, Any]:
    """`writers` clients, each sending its next write as soon as the previous one is answered."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        connection: _Connection | None = None
        while time.perf_counter() < deadline:
            request = writes.next()
            started = time.perf_counter()
            status = 0
            try:
                if connection is None:
                    connection = _Connection(*await asyncio.open_connection(host, port))
                async with asyncio.timeout(timeout):
                    status = await connection.exchange(request)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                if connection is not None:
                    connection.close()
                connection = None
            statuses[status] = statuses.get(status, 0) + 1
            if status in (200, 201):
                latencies.append(time.perf_counter() - started)
        if connection is not None:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return summary(statuses, latencies, time.perf_counter() - started)


def summary(statuses: dict[int, int], latencies: list[float], elapsed: float) -> dict[str, Any]:
    sent = sum(statuses.values())
    ok = statuses.get(200, 0) + statuses.get(201, 0)
    result: dict[str, Any] = {
        "sent": sent,
        "errors": sent - ok,
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "rate": round(ok / elapsed, 1) if elapsed else 0.0,
    }
    if latencies:
        ms = np.array(latencies) * 1000
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
            result[f"{name}_ms"] = round(float(np.percentile(ms, q)), 1)
    return result


async def start_failing_run(base: str, headers: dict[str, str], after: float) -> int | str:
    """Start, `after` seconds into a load, a run that must fail (its criterion has no data);
    its id, or why it could not be started."""
    await asyncio.sleep(after)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        try:
            answer = await client.post(
                "/api/v1/training-runs", json={"criteria": [EMPTY_CRITERION]}
            )
        except httpx.HTTPError as exc:
            return f"not started: {type(exc).__name__}"
        if answer.status_code != 202:
            return f"not started: {answer.status_code}"
        return int(answer.json()["id"])


async def measured(
    base: str, key: str, load: Any, *, fail_after: float, start_run: bool
) -> tuple[Any, int | str]:
    """The load's outcome, with the failing run started during it (when `start_run`)."""
    if not start_run:
        return await load, "not started: no worker"
    headers = {"Authorization": f"Bearer {key}"}
    outcome, run_id = await asyncio.gather(load, start_failing_run(base, headers, fail_after))
    return outcome, run_id


async def finished_within(seconds: float, load: Coroutine[Any, Any, T]) -> T | None:
    """The load's outcome, or None when it has not finished after `seconds` (a stalled server
    answers too slowly for a fixed-rate load ever to end)."""
    try:
        return await asyncio.wait_for(load, seconds)
    except TimeoutError:
        return None


def runs_settled(client: httpx.Client, timeout: float) -> dict[str, int]:
    """Wait until no run is queued or running; the count of runs by status."""

    def settled() -> dict[str, int] | None:
        counts: dict[str, int] = {}
        offset = 0
        while True:
            page = client.get("/api/v1/training-runs", params={"limit": 1000, "offset": offset})
            page.raise_for_status()
            items = page.json()["items"]
            for item in items:
                counts[item["status"]] = counts.get(item["status"], 0) + 1
            if len(items) < 1000:
                break
            offset += 1000
        busy = counts.get("queued", 0) + counts.get("running", 0)
        return None if busy else counts

    return wait_until("every run to end", settled, timeout, every=1.0)


def auto_runs(client: httpx.Client) -> dict[str, Any]:
    """The auto runs of the whole bench: how many, how long each trained (start to end, s), and
    the idle time between one's end and the next one's start (s)."""
    items = client.get("/api/v1/training-runs", params={"trigger": "auto", "limit": 1000}).json()[
        "items"
    ]
    spans = sorted(
        (datetime.fromisoformat(i["started_at"]), datetime.fromisoformat(i["finished_at"]))
        for i in items
        if i["started_at"] and i["finished_at"]
    )
    return {
        "count": len(items),
        "seconds": [round((end - start).total_seconds(), 1) for start, end in spans],
        "gaps": [
            round((start - previous_end).total_seconds(), 1)
            for (_, previous_end), (start, _) in pairwise(spans)
        ],
    }


def api_cpu_seconds(pid: int) -> float:
    """CPU time used so far by the API process (`licchavi serve` itself, not its worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def cpu_per_write(pid: int, before: float, outcome: dict[str, Any]) -> dict[str, Any]:
    """The API process's CPU time during a load, and per answered write (its worker excluded)."""
    used = api_cpu_seconds(pid) - before
    answered = outcome["sent"] - outcome["errors"]
    per_write = round(used * 1000 / answered, 2) if answered else None
    return {"api_cpu_seconds": round(used, 1), "api_cpu_ms_per_write": per_write}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop writes per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load")
    parser.add_argument("--timeout", type=float, default=70.0, help="client timeout per request")
    parser.add_argument("--settle", type=float, default=300.0, help="wait for runs to end")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--no-worker", action="store_true", help="serve without the worker (no run is checked)"
    )
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="licchavi-embedded-"))
    env = embedded_env(data_dir)
    port = free_port()
    log_path = data_dir / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            *(["--no-worker"] if args.no_worker else []),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, shared",
        "python": platform.python_version(),
        "writers": args.writers,
        "rate": args.rate,
        "seconds": args.seconds,
    }
    try:
        wait_until("the API", lambda: httpx.get(f"{base}/healthz").status_code == 200, 120)
        key = licchavi(["api-key", "create", "--scopes", "admin", "--name", "bench"], env)
        key = key.splitlines()[-1]
        headers = {"Authorization": f"Bearer {key}"}
        client = httpx.Client(base_url=base, headers=headers, timeout=60)
        client.post("/api/v1/criteria", json={"name": EMPTY_CRITERION}).raise_for_status()
        host = f"127.0.0.1:{port}"

        writes = Writes(host, key, seed=1)
        load = closed_loop(
            "127.0.0.1",
            port,
            writes,
            writers=args.writers,
            seconds=args.seconds,
            timeout=args.timeout,
        )
        cpu_before = api_cpu_seconds(server.pid)
        report["closed_loop"], closed_run = run(
            measured(base, key, load, fail_after=args.seconds / 3, start_run=not args.no_worker)
        )
        report["closed_loop"].update(cpu_per_write(server.pid, cpu_before, report["closed_loop"]))
        report["closed_loop"]["load_average"] = os.getloadavg()[0]
        print("closed loop:", json.dumps(report["closed_loop"]), flush=True)

        requests = [writes.next() for _ in range(int(args.rate * args.seconds))]
        fixed_rate = finished_within(
            args.seconds + 2 * args.timeout,
            open_loop(
                "127.0.0.1",
                port,
                requests,
                rate=args.rate,
                connections=args.writers,
                timeout=args.timeout,
                warm_up=[writes.next() for _ in range(args.writers)],
            ),
        )
        cpu_before = api_cpu_seconds(server.pid)
        result, open_run = run(
            measured(
                base, key, fixed_rate, fail_after=args.seconds / 3, start_run=not args.no_worker
            )
        )
        report["open_loop"] = (
            summary(result.statuses, result.latencies, result.elapsed)
            if result is not None
            else f"did not finish within {args.seconds + 2 * args.timeout:.0f} s"
        )
        if isinstance(report["open_loop"], dict):
            report["open_loop"].update(cpu_per_write(server.pid, cpu_before, report["open_loop"]))
            report["open_loop"]["load_average"] = os.getloadavg()[0]
        print("open loop:", json.dumps(report["open_loop"]), flush=True)

        try:
            report["runs"] = None if args.no_worker else runs_settled(client, args.settle)
        except TimeoutError as exc:
            report["runs"] = str(exc)
        report["api_cpu_seconds"] = round(api_cpu_seconds(server.pid), 1)
        report["failing_runs"] = [
            client.get(f"/api/v1/training-runs/{run_id}").json()["status"]
            if isinstance(run_id, int)
            else run_id
            for run_id in (closed_run, open_run)
        ]
        latest = client.get("/api/v1/training-runs", params={"trigger": "auto", "limit": 1}).json()[
            "items"
        ]
        report["latest_auto_run"] = latest[0]["status"] if latest else None
        report["auto_runs"] = auto_runs(client)
        stored = client.get("/api/v1/comparisons", params={"limit": 1}).json()
        report["comparisons_stored"] = stored.get("total")
        client.close()
    finally:
        stopping = time.perf_counter()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(120)
            report["shutdown_seconds"] = round(time.perf_counter() - stopping, 1)
        except subprocess.TimeoutExpired:
            report["shutdown_seconds"] = None
            server.kill()
            server.wait()
        log.close()
        locked = log_path.read_text(errors="replace").count("database is locked")
        report["log_database_is_locked"] = locked
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            report["data_dir"] = str(data_dir)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
