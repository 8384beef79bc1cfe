"""`GET /scores` under concurrent load: pages of 50 from a published run, served by uvicorn with
two worker processes, load from `wrk` (random offsets over the first 1,000 ranks)."""

import argparse
import re
import shutil
import subprocess
import tempfile
import time
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
)

DATABASE = "licchavi_bench_scores"
WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  local offset = math.random(0, 19) * 50
  return wrk.format("GET", "/api/v1/scores?limit=50&offset=" .. offset)
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comparisons", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--videos", type=int, default=9_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--api-workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")

    from ml.synthetic import SyntheticParams, generate

    workdir = Path(tempfile.mkdtemp(prefix="scores-read-"))
    data = generate(
        SyntheticParams(
            n_users=args.users,
            n_videos=args.videos,
            n_comparisons=args.comparisons,
            criteria=["largely_recommended"],
        )
    )
    csv_path = data.write(workdir) / "comparisons.csv"
    url = fresh_database(DATABASE)
    flush_redis()
    env = service_env(url, AUTO_TRAIN_ENABLED="false")
    print(licchavi(["import", str(csv_path)], env))
    headers = api_key(env)
    try:
        with processes(env) as base, httpx.Client(base_url=base, timeout=60) as client:
            run = client.post("/api/v1/training-runs", json={}, headers=headers).json()
            assert wait_for_run(client, run["id"], 600)["status"] == "succeeded"
            total = client.get("/api/v1/scores").json()["total"]
            print(f"published run {run['id']}: {total} videos")
        # The worker is stopped: the API processes are all that runs besides PostgreSQL and wrk.
        with processes(env, api_workers=args.api_workers, worker=False) as base:
            script = workdir / "scores.lua"
            script.write_text(WRK_SCRIPT)
            for _ in range(50):  # warm every API process's connection pool
                httpx.get(f"{base}/api/v1/scores?limit=50")
            time.sleep(1)
            result = subprocess.run(
                [
                    "wrk",
                    "-t2",
                    f"-c{args.connections}",
                    f"-d{args.duration}s",
                    "--latency",
                    "-s",
                    str(script),
                    base,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            print(result.stdout)
    finally:
        drop_database(DATABASE)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    p99 = re.search(r"99%\s+(\S+)", result.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    print(
        f"GET /scores (limit 50): {rate.group(1) if rate else '?'} req/s, "
        f"p99 {p99.group(1) if p99 else '?'}, non-2xx {errors.group(1) if errors else 0}"
    )


if __name__ == "__main__":
    main()
