"""The service stack the training benchmarks run against: a fresh PostgreSQL database, Redis,
an API served by uvicorn and a Celery worker, each a real process on this machine."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def fresh_database(name: str) -> str:
    """Drop and recreate `name`, migrate it, and return its SQLAlchemy URL."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    licchavi(["db", "upgrade"], env={"DATABASE_URL": url})
    return url


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": REDIS_URL,
        "ENVIRONMENT": "production",
        "SECRET_KEY": "bench-" + "x" * 32,
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def licchavi(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"licchavi {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def api_key(env: dict[str, str]) -> dict[str, str]:
    key = licchavi(["api-key", "create", "--scopes", "admin", "--name", "bench"], env)
    return {"Authorization": f"Bearer {key.splitlines()[-1]}"}


def worker_process(env: dict[str, str], output: Any) -> subprocess.Popen[bytes]:
    """A `licchavi worker` (INFO logs) with `env`, writing to `output`."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--loglevel", "INFO"],
        env=env,
        cwd=REPO,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


@contextmanager
def processes(
    env: dict[str, str], *, api_workers: int = 1, worker: bool = True, log: Path | None = None
) -> Iterator[str]:
    """Run the API (uvicorn, `api_workers` processes) and optionally a worker; yield its URL."""
    port = free_port()
    output: Any = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    started = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "app.main:serve_app",
                "--port",
                str(port),
                "--workers",
                str(api_workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    ]
    if worker:
        started.append(worker_process(env, output))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("the API", lambda: httpx.get(f"{base}/healthz").status_code == 200, 60)
        yield base
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if log:
            output.close()


def wait_for_run(client: httpx.Client, run_id: int, timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/training-runs/{run_id}").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(f"run {run_id}", finished, timeout, every=0.05)
