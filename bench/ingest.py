"""Ingest benchmark: bulk API, `licchavi import` and single-write latency on a real PostgreSQL."""

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psycopg

from bench.open_loop import OpenLoopResult, open_loop, post_request, run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CRITERION = "largely_recommended"
WARM_UP = 20  # unmeasured single writes that open the connections


@dataclass
class Comparisons:
    """Synthetic comparisons as parallel arrays; users and videos are numbered, ids built later."""

    users: np.ndarray
    video_a: np.ndarray
    video_b: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def slice(self, start: int, stop: int) -> "Comparisons":
        return Comparisons(
            self.users[start:stop],
            self.video_a[start:stop],
            self.video_b[start:stop],
            self.scores[start:stop],
        )

    def as_json(self) -> bytes:
        return json.dumps(
            [
                {
                    "user_id": f"u{u}",
                    "video_a": f"v{a}",
                    "video_b": f"v{b}",
                    "criteria_scores": [{"criterion": CRITERION, "score": int(s)}],
                }
                for u, a, b, s in zip(
                    self.users.tolist(),
                    self.video_a.tolist(),
                    self.video_b.tolist(),
                    self.scores.tolist(),
                    strict=True,
                )
            ]
        ).encode()

    def as_csv(self) -> str:
        lines = [
            f"u{u},v{a},v{b},{CRITERION},{s}"
            for u, a, b, s in zip(
                self.users.tolist(),
                self.video_a.tolist(),
                self.video_b.tolist(),
                self.scores.tolist(),
                strict=True,
            )
        ]
        return "public_username,video_a,video_b,criteria,score\n" + "\n".join(lines) + "\n"


def synthetic_comparisons(
    rng: np.random.Generator, count: int, *, first_user: int, users: int, videos: int
) -> Comparisons:
    """`count` comparisons with distinct (user, unordered pair) keys, so every row is an insert."""
    wanted = int(count * 1.05) + 100
    user = rng.integers(first_user, first_user + users, wanted)
    a = rng.integers(0, videos, wanted)
    b = rng.integers(0, videos, wanted)
    keep = a != b
    user, a, b = user[keep], a[keep], b[keep]
    low, high = np.minimum(a, b), np.maximum(a, b)
    key = (user.astype(np.int64) * videos + low) * videos + high
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)[:count]
    if len(first) < count:
        raise SystemExit(f"only {len(first)} distinct comparisons; raise --users or --videos")
    scores = rng.integers(-10, 11, count)
    return Comparisons(user[first], a[first], b[first], scores)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q)) if samples else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def recreate_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def run_cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(BIN / "licchavi"), *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"licchavi {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def run_measured(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of one child process, measured with wait4."""
    with open(log, "w") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{text}")
    return elapsed, usage.ru_maxrss / 1024, text  # ru_maxrss is in KiB on Linux


class ApiServer:
    """`licchavi serve --no-worker` on a free localhost port, for the duration of a `with`."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.workers = workers
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ApiServer":
        command = [str(BIN / "licchavi"), "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--no-worker", "--workers", str(self.workers)]
        self._log_file = open(self.log, "wb")  # closed in __exit__
        self.process = subprocess.Popen(
            command, env=self.env, cwd=REPO, stdout=self._log_file, stderr=self._log_file
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"API exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"API not ready after 60 s:\n{self.log.read_text()}")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


@dataclass
class BulkResult:
    rows: int
    seconds: list[float]

    @property
    def rows_per_second(self) -> float:
        return self.rows / sum(self.seconds)


def bulk_ingest(
    client: httpx.Client, comparisons: Comparisons, *, batch_rows: int, media_type: str
) -> BulkResult:
    """Sequential bulk requests; bodies are built beforehand so only the request is timed."""
    bodies = []
    for start in range(0, len(comparisons), batch_rows):
        batch = comparisons.slice(start, start + batch_rows)
        body = batch.as_json() if media_type == "application/json" else batch.as_csv().encode()
        bodies.append((len(batch), body))
    seconds = []
    for expected, body in bodies:
        started = time.perf_counter()
        response = client.post(
            "/api/v1/comparisons/bulk", content=body, headers={"Content-Type": media_type}
        )
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200 or response.json()["inserted"] != expected:
            raise SystemExit(f"bulk {media_type}: {response.status_code} {response.text[:500]}")
    return BulkResult(rows=len(comparisons), seconds=seconds)


def open_loop_latency(
    base_url: str, api_key: str, comparisons: Comparisons, *, rate: float, duration: float
) -> OpenLoopResult:
    """Send single comparisons at a fixed rate whatever the responses do (open loop)."""
    count = min(len(comparisons), int(rate * duration) + WARM_UP)
    address = urlsplit(base_url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    requests = [
        post_request(
            f"{host}:{port}",
            "/api/v1/comparisons",
            json.dumps(
                {
                    "user_id": f"u{comparisons.users[i]}",
                    "video_a": f"v{comparisons.video_a[i]}",
                    "video_b": f"v{comparisons.video_b[i]}",
                    "criteria_scores": [
                        {"criterion": CRITERION, "score": int(comparisons.scores[i])}
                    ],
                }
            ).encode(),
            {"Authorization": f"Bearer {api_key}"},
        )
        for i in range(count)
    ]
    # A few requests first, so connection setup and first-use costs are not measured.
    return run(open_loop(host, port, requests[WARM_UP:], rate=rate, warm_up=requests[:WARM_UP]))


def write_import_csv(path: Path, comparisons: Comparisons, chunk: int = 200_000) -> None:
    with open(path, "w") as output:
        output.write("public_username,video_a,video_b,criteria,score\n")
        for start in range(0, len(comparisons), chunk):
            body = comparisons.slice(start, start + chunk).as_csv()
            output.write(body.split("\n", 1)[1])


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SELECT count(*) FROM comparisons").fetchone()
        return int(row[0]) if row else 0


def autovacuum_off(dsn: str) -> bool:
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SHOW autovacuum").fetchone()
        return bool(row and row[0] == "off")


def checkpoint(dsn: str) -> bool:
    """Write the bulk phases' data to disk before the single writes; False when not allowed.

    The bulk phases leave their newly written table and index pages (about 70 MiB) dirty in the
    kernel's page cache. About 30 s after they were first dirtied (`vm.dirty_expire_centisecs`)
    the kernel writes them back in one go, and while it does, every commit's WAL flush waits
    behind it: single writes stall for 100 to 200 ms, or not at all, depending on whether that
    moment falls inside their 20 s. After a CHECKPOINT the single writes still run on the
    bulk-loaded tables (and pay the full-page images a checkpoint brings), without that write-back
    of another phase's data; `--no-checkpoint` measures the old way."""
    try:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        print(
            "CHECKPOINT not allowed for this role; single writes start right away", file=sys.stderr
        )
        return False
    return True


def drop_queues(broker_url: str) -> None:
    """Delete the wake-ups left on the broker's queues: they name runs of the dropped database."""
    if not broker_url.startswith("redis://"):
        return
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        client.delete("cpu", "gpu")
    finally:
        client.close()


def machine_summary() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory_gib:.0f} GiB, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="licchavi_bench")
    parser.add_argument(
        "--broker-url",
        default="redis://127.0.0.1:6379/13",
        help="a Redis database of the bench's own: the server runs without a worker, so the"
        " wake-ups of the auto runs its writes queue are never consumed; the bench deletes its"
        " queues there at the end",
    )
    parser.add_argument("--bulk-rows", type=int, default=200_000, help="per media type")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--import-rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200.0, help="single writes per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of single writes")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn processes")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the database and the work dir")
    parser.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="start the single writes without first writing the bulk phases' data to disk",
    )
    args = parser.parse_args()

    admin_dsn = f"{args.postgres}/postgres"
    bench_dsn = f"{args.postgres}/{args.database}"
    work = Path(tempfile.mkdtemp(prefix="licchavi-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": bench_dsn.replace("postgresql://", "postgresql+psycopg://", 1),
        "CELERY_BROKER_URL": args.broker_url,
        "ENVIRONMENT": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "DATA_DIR": str(work / "data"),
    }
    rng = np.random.default_rng(args.seed)
    # Disjoint user ranges: each phase writes new rows only, so every phase measures inserts.
    json_rows = synthetic_comparisons(
        rng, args.bulk_rows, first_user=0, users=args.users, videos=args.videos
    )
    csv_rows = synthetic_comparisons(
        rng, args.bulk_rows, first_user=args.users, users=args.users, videos=args.videos
    )
    single_rows = synthetic_comparisons(
        rng, int(args.rate * args.duration) + WARM_UP, first_user=2 * args.users, users=args.users,
        videos=args.videos,
    )  # fmt: skip
    import_rows = synthetic_comparisons(
        rng, args.import_rows, first_user=3 * args.users, users=5 * args.users, videos=args.videos
    )

    recreate_database(admin_dsn, args.database)
    run_cli(["db", "upgrade"], env)
    api_key = run_cli(
        ["api-key", "create", "--scopes", "comparisons:write", "--name", "bench"], env
    )
    api_key = api_key.strip().splitlines()[-1]
    print(f"database {args.database} migrated; work dir {work}", file=sys.stderr)

    with ApiServer(env, work / "api.log", workers=args.api_workers) as server:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as client:
            print("bulk JSON …", file=sys.stderr)
            bulk_json = bulk_ingest(
                client, json_rows, batch_rows=args.batch_rows, media_type="application/json"
            )
            print("bulk CSV …", file=sys.stderr)
            bulk_csv = bulk_ingest(
                client, csv_rows, batch_rows=args.batch_rows, media_type="text/csv"
            )
        if autovacuum_off(bench_dsn):
            # What autovacuum would have done after 400k inserts: without statistics the planner
            # takes the grown tables for empty ones.
            with psycopg.connect(bench_dsn, autocommit=True) as connection:
                connection.execute("ANALYZE")
        checkpointed = not args.no_checkpoint and checkpoint(bench_dsn)
        print("single writes …", file=sys.stderr)
        latency = open_loop_latency(
            server.base_url, api_key, single_rows, rate=args.rate, duration=args.duration
        )

    csv_path = work / "comparisons.csv"
    write_import_csv(csv_path, import_rows)
    print(f"licchavi import ({len(import_rows)} rows) …", file=sys.stderr)
    import_seconds, import_rss, import_output = run_measured(
        [str(BIN / "licchavi"), "import", str(csv_path)], env, work / "import.log"
    )
    stored = count_rows(bench_dsn)
    expected = 2 * args.bulk_rows + latency.sent + WARM_UP + args.import_rows - latency.failed

    def bulk_line(name: str, result: BulkResult) -> str:
        return (
            f"| bulk {name}, {args.batch_rows:,} rows/request | {result.rows:,} rows | "
            f"**{result.rows_per_second:,.0f} rows/s** (request p50 "
            f"{percentile_ms(result.seconds, 50):,.0f} ms, max "
            f"{max(result.seconds) * 1000:,.0f} ms) | ≥ 20,000 rows/s |"
        )

    print(f"\nMachine: {machine_summary()}; comparisons stored at the end: {stored:,}")
    if stored != expected:
        print(f"(expected {expected:,}: some writes were not stored)")
    print("\n| measurement | volume | result | target |")
    print("| --- | --- | --- | --- |")
    print(bulk_line("JSON", bulk_json))
    print(bulk_line("CSV", bulk_csv))
    print(
        f"| `licchavi import` CSV file | {len(import_rows):,} rows | "
        f"**{len(import_rows) / import_seconds:,.0f} rows/s** ({import_seconds:,.1f} s wall, "
        f"peak RSS {import_rss:,.0f} MiB) | |"
    )
    print(
        f"| single `POST /api/v1/comparisons`, open loop {args.rate:g} req/s for "
        f"{args.duration:g} s | {latency.sent:,} requests ({latency.served_rate:,.0f} req/s "
        f"served, {latency.failed} failed; client send lag p99 "
        f"{percentile_ms(latency.send_lags, 99):.1f} ms) | "
        f"p50 **{percentile_ms(latency.latencies, 50):.1f} ms**, "
        f"p99 **{percentile_ms(latency.latencies, 99):.1f} ms**, max "
        f"{percentile_ms(latency.latencies, 100):.1f} ms | p99 < 25 ms |"
    )
    print(
        "\nSingle writes started "
        + ("after a CHECKPOINT" if checkpointed else "right after the bulk phases (no CHECKPOINT)")
    )
    print(f"\n`licchavi import` said: {import_output.strip().splitlines()[-1]}")

    if not args.keep:
        drop_queues(args.broker_url)
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
