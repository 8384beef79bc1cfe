"""Wake-up benchmark: POST of a training run → its start, right after a 1,000-evaluation sweep.

For each broker (Redis with PostgreSQL; the embedded SQLite broker with SQLite) it starts real
processes (uvicorn and one `licchavi worker`), imports a small synthetic data set, submits a
grid sweep whose evaluations are all released at once (tiny ones, a fraction of a second each),
waits until the worker is busy on them, then posts `--runs` training runs one after another and
times each from the POST to the first poll (every 20 ms) that sees it started. It also counts
the wake-ups waiting in the broker queue with the sweep released, and after each run.

    .venv/bin/python -m bench.wakeups                    # both brokers, 1,000 evaluations
    .venv/bin/python -m bench.wakeups --broker embedded --evaluations 1000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.stack import (
    REDIS_URL,
    api_key,
    drop_database,
    flush_redis,
    fresh_database,
    licchavi,
    processes,
    service_env,
    wait_for_run,
    wait_until,
)

DATABASE = "licchavi_bench_wakeups"
SEEDS = 10


def sweep_spec(evaluations: int) -> dict[str, Any]:
    """A grid of `evaluations / SEEDS` points × SEEDS seeds on a tiny synthetic set."""
    points = max(1, evaluations // SEEDS)
    return {
        "name": f"{points * SEEDS} evaluations",
        "method": "grid",
        "parameters": {"w": {"values": [round(0.01 * (i + 1), 2) for i in range(points)]}},
        "repeats": {"seeds": list(range(SEEDS))},
        "include_baseline": False,
        "evaluation": {
            "kind": "synthetic",
            "generator": {"n_users": 10, "n_videos": 20, "comps_per_video": 2},
        },
        "objectives": [{"metric": "spearman", "direction": "maximize"}],
        "base": {"epochs": 5, "compute_uncertainty": False},
        "budget": {"max_parallel": points},
    }


def waiting_wakeups(env: dict[str, str]) -> int:
    """Wake-ups in the worker queue not yet delivered, asked of the broker through kombu."""
    from app.core.celery_app import celery_app, reconfigure
    from app.core.config import get_settings
    from app.runs.wakeups import undelivered

    for name in ("CELERY_BROKER_URL", "DATA_DIR"):
        if name in env:
            os.environ[name] = env[name]
        else:
            os.environ.pop(name, None)
    get_settings.cache_clear()
    reconfigure()
    with celery_app.producer_or_acquire() as producer:
        return undelivered(producer.channel, celery_app.conf.task_default_queue)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def evaluation_counts(client: httpx.Client, sweep_id: int) -> dict[str, int]:
    body = client.get(f"/api/v1/sweeps/{sweep_id}").json()
    return dict(body["progress"]["evaluations"])


def measure(name: str, env: dict[str, str], args: argparse.Namespace, data: Path) -> dict:
    print(licchavi(["import", str(data)], env))
    headers = api_key(env)
    result: dict[str, Any] = {"broker": name, "evaluations": args.evaluations}
    with processes(env) as base, httpx.Client(base_url=base, timeout=60) as client:
        submitted = client.post(
            "/api/v1/sweeps", json=sweep_spec(args.evaluations), headers=headers
        )
        assert submitted.status_code == 202, submitted.text
        sweep_id = submitted.json()["id"]
        wait_until(
            "the sweep's evaluations released and the worker busy on them",
            lambda: (
                (counts := evaluation_counts(client, sweep_id)).get("pending", 0) == 0
                and sum(counts.values()) >= args.evaluations
                and counts.get("succeeded", 0) >= 1
            ),
            600,
        )
        result["waiting_after_release"] = waiting_wakeups(env)
        starts: list[float] = []
        posts: list[float] = []
        waits: list[float] = []
        waiting: list[int] = []
        queued: list[int] = []
        for _ in range(args.runs):
            queued.append(evaluation_counts(client, sweep_id).get("queued", 0))
            posted = time.perf_counter()
            created = client.post("/api/v1/training-runs", json={}, headers=headers)
            posts.append(time.perf_counter() - posted)
            assert created.status_code == 202, created.text
            run_url = f"/api/v1/training-runs/{created.json()['id']}"

            def started(url: str = run_url) -> Any:
                return client.get(url).json()["started_at"]

            wait_until(f"{run_url} to start", started, args.timeout, every=0.02)
            starts.append(time.perf_counter() - posted)
            run = wait_for_run(client, created.json()["id"], 300)
            assert run["status"] == "succeeded", run
            waits.append(seconds_between(run["created_at"], run["started_at"]))
            waiting.append(waiting_wakeups(env))
        client.post(f"/api/v1/sweeps/{sweep_id}/cancel", headers=headers)
    result["evaluations_queued_at_each_post"] = queued
    result["post_answered_s"] = [round(value, 3) for value in posts]
    result["created_to_started_s"] = [round(value, 3) for value in waits]
    result["post_to_start_s"] = [round(value, 3) for value in starts]
    result["post_to_start_max_s"] = round(max(starts), 3)
    result["waiting_after_each_run"] = waiting
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", choices=["redis", "embedded", "both"], default="both")
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a run may wait")
    args = parser.parse_args()
    from ml.synthetic import SyntheticParams, generate

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-wakeups-") as scratch:
        data = generate(SyntheticParams(n_users=20, n_videos=60, n_comparisons=1000, seed=1)).write(
            Path(scratch) / "data"
        )
        csv = data / "comparisons.csv"
        common = {"AUTO_TRAIN_ENABLED": "false", "DATA_DIR": str(Path(scratch) / "service")}
        if args.broker in ("redis", "both"):
            url = fresh_database(DATABASE)
            flush_redis()
            try:
                results.append(measure("redis", service_env(url, **common), args, csv))
            finally:
                drop_database(DATABASE)
                flush_redis()
        if args.broker in ("embedded", "both"):
            env = {**service_env("", **common), "DATA_DIR": str(Path(scratch) / "embedded")}
            for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
                env.pop(name)
            licchavi(["db", "upgrade"], env)
            results.append(measure("embedded", env, args, csv))
    for result in results:
        print(json.dumps(result))
    print(
        "\n| broker | evaluations | POST → started, max (median) | row created → started, max |"
        " wake-ups waiting |"
    )
    print("|---|---|---|---|---|")
    for result in results:
        starts = sorted(result["post_to_start_s"])
        print(
            f"| {result['broker']} | {result['evaluations']} | "
            f"{starts[-1]} s ({starts[len(starts) // 2]} s) over {len(starts)} runs | "
            f"{max(result['created_to_started_s'])} s | "
            f"{result['waiting_after_release']} after release, "
            f"≤ {max(result['waiting_after_each_run'])} after each run |"
        )
    print(f"(Redis at {REDIS_URL})")


if __name__ == "__main__":
    main()
