"""Freshness benchmark: time from posting one comparison to `GET /scores` serving a run with it.

500k synthetic comparisons are imported into a fresh PostgreSQL database (`licchavi import`),
a first run is trained, then each repeat posts one new comparison and polls `GET /scores`
until its `run_id` is a new auto run whose snapshot holds one more comparison.
"""

import argparse
import json
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.stack import (
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

DATABASE = "licchavi_bench_freshness"
STAGES = re.compile(
    r"run (\d+): (\d+) comparisons; snapshot ([\d.]+) s, training ([\d.]+) s, "
    r"publication ([\d.]+) s"
)


def generate_csv(directory: Path, users: int, videos: int, comparisons: int) -> Path:
    from ml.synthetic import SyntheticParams, generate

    data = generate(
        SyntheticParams(
            n_users=users,
            n_videos=videos,
            n_comparisons=comparisons,
            criteria=["largely_recommended"],
        )
    )
    return data.write(directory) / "comparisons.csv"


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comparisons", type=int, default=500_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--videos", type=int, default=37_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solver", default="faithful")
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="freshness-"))
    started = time.perf_counter()
    csv_path = generate_csv(workdir, args.users, args.videos, args.comparisons)
    print(f"generated {args.comparisons} comparisons in {time.perf_counter() - started:.1f} s")
    url = fresh_database(DATABASE)
    flush_redis()
    env = service_env(url, AUTO_TRAIN_ENABLED="false")
    started = time.perf_counter()
    print(licchavi(["import", str(csv_path)], env))
    print(f"import: {time.perf_counter() - started:.1f} s")

    env = service_env(url)
    headers = api_key(env)
    log = workdir / "services.log"
    results = []
    try:
        with processes(env, log=log) as base, httpx.Client(base_url=base, timeout=60) as client:
            started = time.perf_counter()
            first = client.post(
                "/api/v1/training-runs", json={"solver": args.solver}, headers=headers
            ).json()
            run = wait_for_run(client, first["id"], 1800)
            assert run["status"] == "succeeded", run
            print(f"first (cold) run: {time.perf_counter() - started:.1f} s")
            current, count = run["id"], run["n_comparisons"]
            for repeat in range(args.repeats):
                body = {
                    "user_id": f"bench-newcomer-{repeat}",
                    "video_a": "vid00000001",
                    "video_b": f"vid{10 + repeat:08d}",
                    "criteria_scores": [{"criterion": "largely_recommended", "score": 7}],
                }
                posted_at = time.perf_counter()
                assert client.post("/api/v1/comparisons", json=body, headers=headers).is_success
                previous = current

                def fresh(previous: int = previous) -> int | None:
                    served: int | None = client.get("/api/v1/scores", params={"limit": 1}).json()[
                        "run_id"
                    ]
                    return served if served not in (None, previous) else None

                current = wait_until("fresh scores", fresh, 600, every=0.05)
                latency = time.perf_counter() - posted_at
                run = client.get(f"/api/v1/training-runs/{current}").json()
                assert run["trigger"] == "auto" and run["n_comparisons"] == count + 1, run
                count = run["n_comparisons"]
                result = {
                    "latency_s": round(latency, 2),
                    "queued_s": round(seconds_between(run["created_at"], run["started_at"]), 2),
                    "run_s": round(seconds_between(run["started_at"], run["finished_at"]), 2),
                    "epochs": run["epoch"],
                }
                results.append(result)
                print(f"repeat {repeat}: {json.dumps(result)}")
                time.sleep(1)
    finally:
        if not args.keep_database:
            drop_database(DATABASE)
    stages = [match.groups() for match in STAGES.finditer(log.read_text())]
    for run_id, comparisons, snapshot, training, publication in stages:
        print(
            f"run {run_id}: {comparisons} comparisons, snapshot {snapshot} s, "
            f"training {training} s, publication {publication} s"
        )
    latencies = sorted(result["latency_s"] for result in results)
    print(f"freshness: median {latencies[len(latencies) // 2]} s, max {latencies[-1]} s")


if __name__ == "__main__":
    main()
