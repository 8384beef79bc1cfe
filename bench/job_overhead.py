"""Job overhead benchmark: POST /training-runs → succeeded on the 1,000-comparison demo set.

The worker is warmed by one run first (so torch is already imported in its pool process); each
measured run is then timed from the POST to the first poll (every 50 ms) that sees `succeeded`.
"""

import argparse
import json
import time
from datetime import datetime

import httpx

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
)

DATABASE = "licchavi_bench_jobs"
DEMO = REPO / "app" / "demo" / "comparisons.csv"


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    url = fresh_database(DATABASE)
    flush_redis()
    env = service_env(url, AUTO_TRAIN_ENABLED="false")
    print(licchavi(["import", str(DEMO)], env))
    headers = api_key(env)
    totals = []
    try:
        with processes(env) as base, httpx.Client(base_url=base, timeout=60) as client:
            posted = time.perf_counter()
            warm = client.post("/api/v1/training-runs", json={}, headers=headers).json()
            assert wait_for_run(client, warm["id"], 300)["status"] == "succeeded"
            print(f"first run of a fresh worker: {time.perf_counter() - posted:.2f} s")
            for _ in range(args.runs):
                posted = time.perf_counter()
                run_id = client.post("/api/v1/training-runs", json={}, headers=headers).json()["id"]
                run = wait_for_run(client, run_id, 120)
                total = time.perf_counter() - posted
                assert run["status"] == "succeeded", run
                totals.append(total)
                print(
                    json.dumps(
                        {
                            "post_to_succeeded_s": round(total, 3),
                            "queued_s": round(
                                seconds_between(run["created_at"], run["started_at"]), 3
                            ),
                            "run_s": round(
                                seconds_between(run["started_at"], run["finished_at"]), 3
                            ),
                            "epochs": run["epoch"],
                        }
                    )
                )
    finally:
        drop_database(DATABASE)
    totals.sort()
    print(
        f"job overhead over {len(totals)} runs: median {totals[len(totals) // 2]:.2f} s, "
        f"max {totals[-1]:.2f} s"
    )


if __name__ == "__main__":
    main()
