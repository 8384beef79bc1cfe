"""Bounded specs: time and peak memory of `POST /sweeps` for the worst specs a client can send.

Runs the API in this process on a fresh embedded SQLite data directory. For each spec it times
the request (the median of a few, without tracing), then repeats it once under tracemalloc for
the peak of Python allocations, and records the status, the bytes stored and the size of a
`GET /sweeps` page afterwards. Prints a Markdown table.

    PYTHONPATH=$PWD python -m bench.spec_limits
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

MEGABYTE = 1_048_576 - 1000
# The classic billion laughs: nine references per level, 9⁹ strings once expanded.
BILLION_LAUGHS = "\n".join(
    [
        "name: laughs",
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{','.join(['*' + previous] * 9)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "parameters: {solver: {values: *i}}",
    ]
)


THOUSAND_VALUES = [round(0.001 * i, 3) for i in range(1, 1001)]


def spec(parameters: dict[str, Any], **extra: Any) -> str:
    return json.dumps(
        {"name": "bench", "criterion": "largely_recommended", **extra} | {"parameters": parameters}
    )


# (label, body, media type, dry run)
CASES: list[tuple[str, str, str, bool]] = [
    ("billion laughs (YAML)", BILLION_LAUGHS, "application/yaml", True),
    (
        "1 MB YAML, one flat list",
        "name: x\ntags: [" + "t," * (MEGABYTE // 2) + "t]\n",
        "application/yaml",
        True,
    ),
    (
        "1 MB YAML, 500,000 levels deep",
        "name: x\nbase: " + "[" * (MEGABYTE // 2) + "]" * (MEGABYTE // 2) + "\n",
        "application/yaml",
        True,
    ),
    (
        "range w 1..3e7 step 1",
        spec({"w": {"low": 1, "high": 3e7, "step": 1}}),
        "application/json",
        True,
    ),
    (
        "range of 1e12 points, padded to 1 MB",
        spec({"w": {"low": 1e-6, "high": 1e6, "step": 1e-6}}) + " " * MEGABYTE,
        "application/json",
        True,
    ),
    (
        "grid of 200,000 points (epochs 1..1e5 × 2)",
        spec(
            {
                "epochs": {"low": 1, "high": 100_000, "step": 1, "type": "int"},
                "w": {"values": [0.5, 1.0]},
            }
        ),
        "application/json",
        True,
    ),
    (
        "1 MB JSON values list",
        spec({"w": {"values": [0.5] * (MEGABYTE // 5)}}),
        "application/json",
        True,
    ),
    (
        "largest grid accepted: 100,000 points, dry run",
        spec({"epochs": {"low": 1, "high": 100_000, "step": 1, "type": "int"}}),
        "application/json",
        True,
    ),
    (
        "largest grid accepted: 100,000 points, submitted",
        spec({"epochs": {"low": 1, "high": 100_000, "step": 1, "type": "int"}}),
        "application/json",
        False,
    ),
    (
        "2 × 1,000 values in YAML, submitted",
        "name: bench\nmethod: random\nbudget: {max_trials: 100}\nparameters:\n"
        + "".join(
            f"  {name}: {{values: [{', '.join(map(str, THOUSAND_VALUES))}]}}\n"
            for name in ("w", "w0")
        ),
        "application/yaml",
        False,
    ),
    (
        "2 × 1,000 values (the most a spec lists), submitted",
        spec(
            {
                "w": {"values": THOUSAND_VALUES},
                "w0": {"values": THOUSAND_VALUES},
            },
            method="random",
            budget={"max_trials": 100},
        ),
        "application/json",
        False,
    ),
]


def measure(call: Callable[[], Any], repeats: int) -> tuple[float, int, Any]:
    """Median seconds over `repeats` calls, then the traced peak bytes of one more."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    try:
        result = call()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return statistics.median(seconds), peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        os.environ["DATA_DIR"] = data_dir
        os.environ.pop("DATABASE_URL", None)
        from fastapi.testclient import TestClient
        from sqlmodel import Session

        from app.cli.main import migrate
        from app.core.config import get_settings
        from app.core.db import get_engine
        from app.identity.security import create_api_key
        from app.main import create_app

        settings = get_settings()
        settings.ensure_data_dir()
        migrate()
        with Session(get_engine()) as session:
            _row, key = create_api_key(session, name="bench", scopes=["sweeps:write"])
            session.commit()
        auth = {"Authorization": f"Bearer {key}"}
        print("| spec | bytes | status | median s | peak traced MiB | stored spec bytes |")
        print("|---|---:|---:|---:|---:|---:|")
        with TestClient(create_app()) as client:
            for label, body, media_type, dry_run in CASES:
                content = body.encode()

                def post(
                    content: bytes = content, media_type: str = media_type, dry_run: bool = dry_run
                ) -> Any:
                    return client.post(
                        "/api/v1/sweeps",
                        content=content,
                        headers={**auth, "Content-Type": media_type},
                        params={"dry_run": str(dry_run).lower()},
                    )

                seconds, peak, response = measure(post, 1 if not dry_run else args.repeats)
                stored = (
                    len(json.dumps(response.json()["spec"])) if response.status_code == 202 else 0
                )
                print(
                    f"| {label} | {len(content):,} | {response.status_code} | {seconds:.3f} |"
                    f" {peak / 2**20:.1f} | {stored:,} |"
                )
            page = client.get("/api/v1/sweeps", params={"limit": 100})
            print(
                f"\n`GET /sweeps?limit=100` after these: {page.json()['total']} sweeps,"
                f" {len(page.content):,} bytes."
            )


if __name__ == "__main__":
    main()
