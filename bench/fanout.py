"""Criteria fan-out benchmark: one run of 10 criteria on 1, 2 and 4 worker processes.

PostgreSQL + Redis, the API under uvicorn and `licchavi worker` processes (concurrency 1 each),
all real processes. Each criterion has the same synthetic comparisons' size and a fixed number
of epochs (precision 1, no early stop, no warm start), so every run does the same work. Per
worker count: a warm-up run (5 epochs per criterion, untimed) and then `--repeats` timed runs,
each from its POST to the first poll (every 50 ms) that sees it succeeded, i.e. published.

Besides wall time, it prints what does not depend on how many cores are free: each criterion's
claim-to-finish interval and the worker that trained it (a timeline), the most criteria in
training at once, criterion-seconds over their span (how many criteria trained in parallel on
average), and the CPU time each worker's pool process spent on the run (read from /proc): with a
free core per worker the run takes about its busiest worker's CPU time, so the ratio of those
between 1 and N workers is the speed-up that N free cores give. The load average of the machine
is printed with each run.
"""

import argparse
import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.stack import (
    REPO,
    api_key,
    drop_database,
    flush_redis,
    fresh_database,
    licchavi,
    processes,
    service_env,
    wait_for_run,
    wait_until,
    worker_process,
)

DATABASE = "licchavi_bench_fanout"
# Tournesol's ten criteria.
CRITERIA = [
    "largely_recommended",
    "reliability",
    "importance",
    "engaging",
    "pedagogy",
    "layman_friendly",
    "diversity_inclusion",
    "backfire_risk",
    "better_habits",
    "entertaining_relaxing",
]


def synthetic_csv(directory: Path, n_comparisons: int) -> Path:
    from ml.synthetic import SyntheticParams, generate

    data = generate(
        SyntheticParams(
            n_users=100,
            n_videos=500,
            n_comparisons=n_comparisons,
            criteria=CRITERIA,
            p_extra_criteria=1.0,
            seed=11,
        )
    )
    return data.write(directory) / "comparisons.csv"


def start_workers(env: dict[str, str], count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    started = []
    files = [logs / f"worker{index}.log" for index in range(count)]
    for path in files:
        with path.open("wb") as output:
            started.append(worker_process(env, output))
    wait_until(
        f"{count} workers ready", lambda: all(" ready." in p.read_text() for p in files), 120
    )
    return started


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()


def timeline(database_url: str, run_id: int) -> list[dict[str, Any]]:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT criterion, trained_by, started_at, finished_at, attempt"
            " FROM training_run_criteria WHERE run_id = %s ORDER BY started_at",
            (run_id,),
        ).fetchall()
    return [
        {
            "criterion": criterion,
            "worker": worker.split(":")[-2],  # host:pid:nonce → the pool process's pid
            "started": started,
            "finished": finished,
            "attempt": attempt,
        }
        for criterion, worker, started, finished, attempt in rows
    ]


def pool_cpu_seconds(workers: list[subprocess.Popen[bytes]]) -> dict[int, float]:
    """User + system CPU seconds so far of each worker's pool processes, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for worker in workers:
        listed = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
        for pid in map(int, listed.stdout.split()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


def most_at_once(items: list[dict[str, Any]]) -> int:
    events = sorted(
        [(item["started"], 1) for item in items] + [(item["finished"], -1) for item in items],
        key=lambda event: (event[0], event[1]),
    )
    running = peak = 0
    for _at, step in events:
        running += step
        peak = max(peak, running)
    return peak


def chart(items: list[dict[str, Any]], origin: datetime, width: int = 60) -> list[str]:
    """One line per worker: its criteria as letters over time (A..J: the criteria in the order
    they were claimed), from the run's claim to its last criterion's end."""
    end = max(item["finished"] for item in items)
    span = max((end - origin).total_seconds(), 1e-9)
    lines = [f"  {span:.1f} s from the run's claim to its last criterion's end"]
    letters = {item["criterion"]: chr(ord("A") + index) for index, item in enumerate(items)}
    for worker in sorted({item["worker"] for item in items}):
        row = [" "] * width
        for item in items:
            if item["worker"] != worker:
                continue
            first = int((item["started"] - origin).total_seconds() / span * (width - 1))
            last = int((item["finished"] - origin).total_seconds() / span * (width - 1))
            for position in range(first, last + 1):
                row[position] = letters[item["criterion"]]
        lines.append(f"  pid {worker:>7} |{''.join(row)}|")
    return lines


def measure(
    client: httpx.Client,
    headers: dict[str, str],
    database_url: str,
    epochs: int,
    workers: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    cpu_before = pool_cpu_seconds(workers)
    posted = time.perf_counter()
    created = client.post(
        "/api/v1/training-runs",
        json={"config": {"epochs": epochs, "precision": 1.0}, "warm_start": False},
        headers=headers,
    ).json()
    run = wait_for_run(client, created["id"], 3600)
    wall = time.perf_counter() - posted
    cpu = {
        pid: round(seconds - cpu_before.get(pid, 0.0), 2)
        for pid, seconds in pool_cpu_seconds(workers).items()
    }
    assert run["status"] == "succeeded", run
    items = timeline(database_url, run["id"])
    origin = datetime.fromisoformat(run["started_at"])
    criterion_seconds = sum((i["finished"] - i["started"]).total_seconds() for i in items)
    span = (max(i["finished"] for i in items) - min(i["started"] for i in items)).total_seconds()
    return {
        "run_id": run["id"],
        "post_to_published_s": round(wall, 2),
        "criterion_seconds": round(criterion_seconds, 2),
        "training_span_s": round(span, 2),
        "parallelism": round(criterion_seconds / span, 2),
        # The CPU each pool process spent on the run: with a free core per worker, the run
        # would take about its busiest worker's CPU time (plus what waits on the database).
        "cpu_s_total": round(sum(cpu.values()), 2),
        "cpu_s_busiest_worker": max(cpu.values()),
        "cpu_s_per_worker": sorted(cpu.values(), reverse=True),
        "most_at_once": most_at_once(items),
        "workers_used": len({i["worker"] for i in items}),
        "per_criterion_s": sorted(
            round((i["finished"] - i["started"]).total_seconds(), 2) for i in items
        ),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "chart": chart(items, origin),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--comparisons", type=int, default=4_000, help="per criterion")
    parser.add_argument("--epochs", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--logs", type=Path, default=REPO / "test-output" / "bench-fanout")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    url = fresh_database(DATABASE)
    flush_redis()
    # One BLAS thread per process: the workers are the parallelism measured here.
    env = service_env(
        url, AUTO_TRAIN_ENABLED="false", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"
    )
    print(licchavi(["import", str(synthetic_csv(args.logs, args.comparisons))], env))
    headers = api_key(env)
    results = []
    try:
        with (
            processes(env, worker=False) as base,
            httpx.Client(base_url=base, timeout=60) as client,
        ):
            for count in [int(value) for value in args.workers.split(",")]:
                workers = start_workers(env, count, args.logs)
                try:
                    measure(client, headers, url, 5, workers)  # warm-up: each loads the engine
                    for _ in range(args.repeats):
                        measured = measure(client, headers, url, args.epochs, workers)
                        result = {"workers": count, **measured}
                        results.append(result)
                        chart_lines = result.pop("chart")
                        print(json.dumps(result), flush=True)
                        print("\n".join(chart_lines), flush=True)
                finally:
                    stop_workers(workers)
    finally:
        drop_database(DATABASE)
    first = [r for r in results if r["workers"] == results[0]["workers"]]
    wall_one = min(r["post_to_published_s"] for r in first)
    cpu_one = min(r["cpu_s_busiest_worker"] for r in first)
    print(
        "| workers | load average | POST → published | speed-up | most criteria at once"
        " | parallelism | CPU s, all pools | CPU s, busiest pool | CPU-bound speed-up |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['workers']} | {r['load_average'][0]} → {r['load_average'][1]}"
            f" | {r['post_to_published_s']:.1f} s | {wall_one / r['post_to_published_s']:.2f}×"
            f" | {r['most_at_once']} | {r['parallelism']:.2f} | {r['cpu_s_total']:.1f}"
            f" | {r['cpu_s_busiest_worker']:.1f} | {cpu_one / r['cpu_s_busiest_worker']:.2f}× |"
        )


if __name__ == "__main__":
    main()
