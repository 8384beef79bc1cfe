"""Cost of one rate-limit check (`RateLimits.check` of the writes limit) per counter store.

    python -m bench.rate_limits [--checks 5000]

Runs the check in a loop on process memory and on the benches' Redis database
(`BENCH_REDIS_URL`), with a bare `PING` over the same asyncio client for comparison, and prints
microseconds per call. The keys it writes are deleted at the end.
"""

import argparse
import asyncio
import time

import redis
from starlette.requests import Request

from app.api.rate_limits import WRITES, RateLimits
from app.core.config import Settings
from app.identity.security import Principal
from bench.stack import REDIS_URL

KEY_PREFIX = "licchavi:rate-limits"


async def per_check(storage_url: str, checks: int) -> float:
    settings = Settings(
        rate_limit_enabled=True,
        rate_limit_writes="1000000000/minute",  # never refused: the cost of counting alone
        rate_limit_storage_url=storage_url,
    )
    limits = RateLimits(settings)
    request = Request({"type": "http", "client": ("203.0.113.1", 1), "headers": []})
    principal = Principal(credential="key:bench", scopes=frozenset())
    await limits.check((WRITES,), principal, request)  # connect first
    start = time.perf_counter()
    for _ in range(checks):
        await limits.check((WRITES,), principal, request)
    return (time.perf_counter() - start) / checks


async def per_ping(checks: int) -> float:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
        start = time.perf_counter()
        for _ in range(checks):
            await client.ping()
        return (time.perf_counter() - start) / checks
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000)
    checks = parser.parse_args().checks
    try:
        for name, seconds in (
            ("memory", asyncio.run(per_check("memory://", checks))),
            ("redis", asyncio.run(per_check(REDIS_URL, checks))),
            ("redis PING", asyncio.run(per_ping(checks))),
        ):
            print(f"{name:>12}: {seconds * 1e6:7.0f} µs per call ({checks} calls)")
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{KEY_PREFIX}*"):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
