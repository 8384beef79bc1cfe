"""Sweep benchmarks: evaluation overhead, a 100-trial sweep on xs, and trial listing at 10k trials.

Every subcommand drops, recreates and migrates its own database, runs real processes (uvicorn,
`licchavi worker`, PostgreSQL, Redis) and drops the database again, also when it fails:

    .venv/bin/python -m bench.sweeps overhead     # one worker, ≥ 100 evaluations on xs
    .venv/bin/python -m bench.sweeps xs100        # two workers, 100 trials on xs
    .venv/bin/python -m bench.sweeps listing      # 10,000 trials, list/filter/leaderboard

Each prints a table and the same figures as a markdown snippet.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import json
import math
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import psycopg

from bench.stack import (
    REPO,
    api_key,
    drop_database,
    fresh_database,
    licchavi,
    processes,
    service_env,
    wait_until,
)

DATABASE = "licchavi_bench_sweeps"
# Its own Redis database: the other benchmarks flush db 14 and the tests db 15.
BROKER_URL = os.environ.get("BENCH_SWEEPS_REDIS_URL", "redis://127.0.0.1:6379/13")
XS = Path(os.environ.get("BENCH_XS", "/work/shared/data/licchavi-v1-reference/xs/comparisons.csv"))
SEARCH_SPACE = {
    "lr_node": {"low": 0.1, "high": 5.0, "log": True},
    "lr_gen": {"low": 0.01, "high": 0.5, "log": True},
    "w": {"low": 0.1, "high": 10.0, "log": True},
    "w0": {"low": 0.1, "high": 10.0, "log": True},
}
T = TypeVar("T")
FILTER = "params.w >= 0.5 AND (metrics.heldout_accuracy > 0.7 OR tag IN (fast))"


@contextmanager
def exclusive(timeout: float) -> Iterator[None]:
    """One run at a time on this machine: runs share the database name and the broker's Redis
    database, and each would drop or flush the other's."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "bench-sweeps.lock", "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as busy:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another bench.sweeps run held the lock for {timeout:.0f} s"
                    ) from busy
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- machine, numbers, output -----------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, timeout: float) -> float:
    """Wait (bounded) for the 1-minute load average to fall below `max_load`; returns it."""
    deadline = time.monotonic() + timeout
    load = load_average()
    while load >= max_load and time.monotonic() < deadline:
        print(f"load average {load:.2f} ≥ {max_load}; waiting for a quiet machine", flush=True)
        time.sleep(min(20.0, max(0.0, deadline - time.monotonic())))
        load = load_average()
    if load >= max_load:
        print(f"still loaded after {timeout:.0f} s (load {load:.2f}); measuring anyway")
    return load


def stats(values: list[float]) -> dict[str, float]:
    data = np.asarray(values, dtype=float)
    return {
        "n": float(data.size),
        "median": float(np.median(data)),
        "p90": float(np.percentile(data, 90)),
        "p95": float(np.percentile(data, 95)),
        "max": float(data.max()),
        "min": float(data.min()),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    for line in [header, [("-" * width) for width in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))


def print_markdown(header: list[str], rows: list[list[str]], notes: list[str]) -> None:
    print("\nmarkdown:\n")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in notes:
        print(f"\n{note}")
    print()


# --- the stack --------------------------------------------------------------------------------


def flush_broker() -> None:
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def pg_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


@dataclass
class Stack:
    env: dict[str, str]
    database_url: str
    base: str
    headers: dict[str, str]
    logs: Path
    worker_logs: list[Path] = field(default_factory=list)


@contextmanager
def worker_processes(env: dict[str, str], count: int, logs: Path) -> Iterator[list[Path]]:
    """`licchavi worker --concurrency 1` × count, each in its own process group, so that its
    prefork children are stopped with it even when the main process has to be killed."""
    started: list[tuple[subprocess.Popen[bytes], Any, Path]] = []
    try:
        for index in range(count):
            log = logs / f"worker-{index}.log"
            handle = open(log, "wb")  # noqa: SIM115 (closed in finally)
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "worker",
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                ],
                env=env,
                cwd=REPO,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append((process, handle, log))
        for process, _, log in started:

            def ready(process: subprocess.Popen[bytes] = process, log: Path = log) -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited early:\n{log.read_text()[-3000:]}")
                return " ready." in log.read_text()

            wait_until(f"worker {log.name}", ready, 120)
        yield [log for _, _, log in started]
    finally:
        for process, _, _ in started:
            if process.poll() is None:
                process.terminate()
        for process, handle, _ in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            handle.close()


@contextmanager
def stack(
    workers: int, *, import_xs: bool, keep_logs: bool, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A fresh database (xs imported), a flushed broker, the API and `workers` workers; all of
    it stopped and dropped on the way out."""
    logs = Path(tempfile.mkdtemp(prefix="bench-sweeps-"))
    created = False
    try:
        flush_broker()
        url = fresh_database(DATABASE)
        created = True
        env = service_env(
            url, CELERY_BROKER_URL=BROKER_URL, AUTO_TRAIN_ENABLED="false", **(extra_env or {})
        )
        if import_xs:
            print(licchavi(["import", str(XS)], env))
        headers = api_key(env)
        with (
            processes(env, worker=False, log=logs / "api.log") as base,
            worker_processes(env, workers, logs) as worker_logs,
        ):
            yield Stack(env, url, base, headers, logs, worker_logs)
    finally:
        if created:
            drop_database(DATABASE)
        flush_broker()
        if keep_logs:
            print(f"logs kept in {logs}")
        else:
            for path in logs.iterdir():
                path.unlink()
            logs.rmdir()


# --- sweeps -----------------------------------------------------------------------------------


def holdout_spec(
    name: str, *, method: str, trials: int, folds: int, parallel: int, baseline: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "criterion": "largely_recommended",
        "method": method,
        "parameters": SEARCH_SPACE,
        "budget": {"max_trials": trials, "max_parallel": parallel},
        "repeats": {"seeds": [0]},
        "evaluation": {"kind": "holdout", "folds": folds},
        "include_baseline": baseline,
        "sampler_seed": 1,
    }


@dataclass
class SweepRun:
    sweep_id: int
    wall_seconds: float  # POST → first poll that sees `completed`
    server_seconds: float  # created_at → finished_at in the database
    status: str
    evaluations: list[dict[str, Any]]
    trials: list[dict[str, Any]]


def run_sweep(stack: Stack, spec: dict[str, Any], timeout: float) -> SweepRun:
    """Submit over HTTP and poll the sweep row (every 50 ms, bounded) until it ends."""
    with (
        httpx.Client(base_url=stack.base, timeout=60) as client,
        psycopg.connect(pg_url(stack.database_url), autocommit=True) as connection,
    ):
        posted = time.perf_counter()
        response = client.post("/api/v1/sweeps", json=spec, headers=stack.headers)
        if response.status_code != 202:
            raise RuntimeError(f"submit failed: {response.status_code} {response.text}")
        sweep_id = int(response.json()["id"])
        deadline = time.monotonic() + timeout
        while True:
            row = connection.execute(
                "SELECT status, created_at, finished_at FROM sweeps WHERE id = %s", (sweep_id,)
            ).fetchone()
            assert row is not None
            if row[0] in ("completed", "failed", "cancelled") and row[2] is not None:
                wall = time.perf_counter() - posted
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {row[0]} after {timeout:.0f} s")
            time.sleep(0.05)
        status, created_at, finished_at = row
        if status != "completed":
            error = connection.execute(
                "SELECT error FROM sweeps WHERE id = %s", (sweep_id,)
            ).fetchone()
            raise RuntimeError(f"sweep {sweep_id} ended {status}: {error}")
        cursor = connection.execute(
            """
            SELECT id, trial_id, unit_index, status, worker, created_at, wakeup_sent_at,
                   started_at, finished_at, (metrics->>'training_seconds')::float AS training,
                   (metrics->>'epochs')::float AS epochs
            FROM sweep_evaluations WHERE sweep_id = %s ORDER BY started_at, id
            """,
            (sweep_id,),
        )
        evaluations = records(cursor)
        trials = records(
            connection.execute(
                "SELECT id, status, created_at, finished_at, told_at FROM sweep_trials "
                "WHERE sweep_id = %s ORDER BY id",
                (sweep_id,),
            )
        )
    return SweepRun(
        sweep_id, wall, (finished_at - created_at).total_seconds(), status, evaluations, trials
    )


def records(cursor: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    names = [column.name for column in cursor.description or []]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def warm_up(stack: Stack, timeout: float) -> float:
    """A small sweep first: Optuna creates its tables, every pool process imports the engine."""
    started = time.perf_counter()
    spec = holdout_spec("warm-up", method="random", trials=4, folds=2, parallel=4, baseline=False)
    run_sweep(stack, spec, timeout)
    return time.perf_counter() - started


def worker_process(owner: str | None) -> str:
    # The lease owner is host:pid:task-nonce; the pool process is host:pid.
    return ":".join((owner or "?").split(":")[:2])


def seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds()


def trial_latencies(run: SweepRun) -> tuple[list[float], list[float]]:
    """Per trial: asked → its first claim, and its last result → the scheduler closing it."""
    units: dict[int, list[dict[str, Any]]] = {}
    for evaluation in run.evaluations:
        units.setdefault(evaluation["trial_id"], []).append(evaluation)
    to_claim, to_close = [], []
    for trial in run.trials:
        rows = units.get(trial["id"], [])
        claims = [row["started_at"] for row in rows if row["started_at"] is not None]
        results = [row["finished_at"] for row in rows if row["finished_at"] is not None]
        if claims:
            to_claim.append((min(claims) - trial["created_at"]).total_seconds())
        if results and trial["finished_at"] is not None:
            to_close.append((trial["finished_at"] - max(results)).total_seconds())
    return to_claim, to_close


def idle_gaps(evaluations: list[dict[str, Any]]) -> list[float]:
    """Per pool process: from one evaluation's recorded result to its next claim."""
    by_process: dict[str, list[dict[str, Any]]] = {}
    for evaluation in evaluations:
        by_process.setdefault(worker_process(evaluation["worker"]), []).append(evaluation)
    gaps = []
    for rows in by_process.values():
        rows.sort(key=lambda row: row["started_at"])
        for previous, current in itertools.pairwise(rows):
            gap = seconds(current["started_at"], previous["finished_at"])
            if gap is not None:
                gaps.append(gap)
    return gaps


# --- overhead ---------------------------------------------------------------------------------


def overhead(args: argparse.Namespace) -> None:
    folds = args.folds
    trials = math.ceil(args.evaluations / folds) - 1  # the baseline is one more trial
    spec = holdout_spec(
        "overhead",
        method="random",
        trials=trials,
        folds=folds,
        parallel=args.parallel,
        baseline=True,
    )
    with stack(1, import_xs=True, keep_logs=args.keep_logs) as running:
        warm = warm_up(running, args.timeout)
        print(f"warm-up sweep: {warm:.1f} s")
        load_before = wait_for_quiet(args.max_load, args.quiet_wait)
        run = run_sweep(running, spec, args.timeout)
        load_after = load_average()
    rows = [row for row in run.evaluations if row["status"] == "succeeded"]
    beyond = [
        (row["finished_at"] - row["started_at"]).total_seconds() - row["training"] for row in rows
    ]
    in_flight = [(row["finished_at"] - row["started_at"]).total_seconds() for row in rows]
    training = [row["training"] for row in rows]
    queued = [
        value
        for row in rows
        if (value := seconds(row["started_at"], row["wakeup_sent_at"])) is not None
    ]
    created = [
        value
        for row in rows
        if (value := seconds(row["started_at"], row["created_at"])) is not None
    ]
    gaps = idle_gaps(rows)
    asked_to_claim, result_to_close = trial_latencies(run)
    n = len(rows)
    print(
        f"sweep {run.sweep_id}: {trials + 1} trials × {folds} folds = {n} evaluations "
        f"succeeded of {len(run.evaluations)}, {run.wall_seconds:.1f} s wall "
        f"({n / run.wall_seconds:.2f} evaluations/s); load {load_before:.2f} → {load_after:.2f}"
    )
    header = ["measure (per evaluation)", "n", "median", "p90", "max", "target"]
    table = []
    for label, values, target in (
        ("overhead: claim → result − training_seconds", beyond, "median < 100 ms"),
        ("claim → result (finished_at − started_at)", in_flight, ""),
        ("training_seconds", training, ""),
        ("queued (wake-up sent) → claim", queued, "for information"),
        ("created → claim", created, "for information"),
        ("worker idle: result → its next claim", gaps, "for information"),
        ("per trial: asked → first claim", asked_to_claim, "for information"),
        ("per trial: last result → closed and told", result_to_close, "for information"),
    ):
        if not values:
            continue
        summary = stats(values)
        table.append(
            [
                label,
                str(int(summary["n"])),
                ms(summary["median"]),
                ms(summary["p90"]),
                ms(summary["max"]),
                target,
            ]
        )
    first = beyond[0] if beyond else float("nan")
    print_table("per-evaluation overhead, one worker", header, table)
    print(f"first measured evaluation overhead: {ms(first)}")
    print_markdown(
        header,
        table,
        [
            f"{trials + 1} trials × {folds} folds of xs (1,000 comparisons), method random, "
            f"max_parallel {args.parallel}, one `licchavi worker --concurrency 1`; "
            f"{run.wall_seconds:.1f} s wall, {n / run.wall_seconds:.2f} evaluations/s; "
            f"load average {load_before:.2f} → {load_after:.2f}."
        ],
    )


# --- xs100 ------------------------------------------------------------------------------------


def xs100(args: argparse.Namespace) -> None:
    fold_counts = [int(part) for part in args.folds.split(",")]
    results = []
    extra_env = {}
    if args.scheduler_interval is not None:
        extra_env["SWEEP_SCHEDULER_INTERVAL_SECONDS"] = str(args.scheduler_interval)
    with stack(2, import_xs=True, keep_logs=args.keep_logs, extra_env=extra_env) as running:
        warm = warm_up(running, args.timeout)
        print(f"warm-up sweep: {warm:.1f} s")
        for folds in fold_counts:
            spec = holdout_spec(
                f"xs100-{folds}",
                method=args.method,
                trials=args.trials,
                folds=folds,
                parallel=args.parallel,
                baseline=False,
            )
            load_before = wait_for_quiet(args.max_load, args.quiet_wait)
            run = run_sweep(running, spec, args.timeout)
            load_after = load_average()
            results.append((folds, run, load_before, load_after))
            print(
                f"sweep {run.sweep_id}: {args.trials} trials × {folds} folds: "
                f"{run.wall_seconds:.1f} s wall"
            )
    header = [
        "trials × units",
        "evaluations",
        "wall (submit → completed)",
        "evaluations/s",
        "training s (sum)",
        "per worker process",
        "worker busy",
        "load",
        "target",
    ]
    table = []
    for folds, run, load_before, load_after in results:
        rows = [row for row in run.evaluations if row["status"] == "succeeded"]
        per_process: dict[str, int] = {}
        busy = 0.0
        for row in rows:
            key = worker_process(row["worker"])
            per_process[key] = per_process.get(key, 0) + 1
            busy += (row["finished_at"] - row["started_at"]).total_seconds()
        table.append(
            [
                f"{args.trials} × {folds} folds",
                str(len(rows)),
                f"{run.wall_seconds:.1f} s",
                f"{len(rows) / run.wall_seconds:.2f}",
                f"{sum(row['training'] for row in rows):.1f}",
                " + ".join(str(count) for count in sorted(per_process.values(), reverse=True)),
                f"{busy / (2 * run.wall_seconds):.0%}",
                f"{load_before:.2f} → {load_after:.2f}",
                "< 120 s",
            ]
        )
    print_table(f"{args.trials}-trial sweeps on xs, two workers", header, table)
    print_markdown(
        header,
        table,
        [
            f"Method {args.method} over lr_node, lr_gen, w, w0 (log ranges), 1 seed, no baseline, "
            f"max_parallel {args.parallel}, scheduler interval {args.scheduler_interval or 0.5} s; "
            "a trial is one configuration evaluated on every fold (train on the other folds, "
            "test on it); two `licchavi worker --concurrency 1`. "
            "Worker busy: time between claim and recorded result over 2 × wall."
        ],
    )


# --- listing ----------------------------------------------------------------------------------


METRIC_NAMES = (
    "heldout_accuracy",
    "heldout_local_accuracy",
    "heldout_log_loss",
    "heldout_brier",
    "heldout_coverage",
    "training_seconds",
    "epochs",
    "peak_memory_bytes",
    "n_parameters",
    "n_train",
    "n_test",
)
HISTORY_TERMS = ("fit", "s", "gen", "reg", "grad_norm", "loss")


def synthetic_metrics(rng: random.Random, params: dict[str, float]) -> dict[str, float]:
    # Accuracy peaks near w = 1 and a moderate lr_gen, as on real data, with noise.
    quality = -0.04 * math.log(params["w"]) ** 2 - 0.03 * math.log(params["lr_gen"] / 0.09) ** 2
    accuracy = min(0.8, max(0.45, 0.72 + quality + rng.gauss(0, 0.02)))
    return {
        "heldout_accuracy": accuracy,
        "heldout_local_accuracy": min(0.9, accuracy + rng.uniform(0, 0.05)),
        "heldout_log_loss": 0.55 + (0.72 - accuracy) + rng.gauss(0, 0.01),
        "heldout_brier": 0.19 + (0.72 - accuracy) / 3 + rng.gauss(0, 0.005),
        "heldout_coverage": rng.uniform(0.95, 1.0),
        "training_seconds": rng.uniform(0.1, 0.6),
        "epochs": float(rng.choice((60, 60, 60, 24, 31))),
        "peak_memory_bytes": float(rng.randint(380, 420) * 2**20),
        "n_parameters": 1841.0,
        "n_train": 800.0,
        "n_test": 200.0,
    }


def listing_rows(
    trials: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """The sweep's spec, its trials and, per trial, its three evaluations (unit 0 to 2)."""
    from ml.config import LicchaviConfig, config_hash

    rng = random.Random(seed)
    spec = {
        "name": "listing",
        "method": "tpe",
        "parameters": SEARCH_SPACE,
        "budget": {"max_trials": trials - 1, "max_parallel": 2},
        "repeats": {"seeds": [0, 1, 2]},
        "evaluation": {"kind": "synthetic", "generator": {}},
        "tags": ["bench"],
    }
    base = LicchaviConfig().model_dump(mode="json")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    statuses = ["succeeded"] * 85 + ["pruned"] * 6 + ["failed"] * 5 + ["running"] * 2
    statuses += ["pending"] * 2
    trial_rows, evaluation_rows = [], []
    for number in range(trials):
        if number == 0:
            params = {name: base[name] for name in sorted(SEARCH_SPACE)}
            source, status = "baseline", "succeeded"
        else:
            params = {
                name: math.exp(rng.uniform(math.log(bounds["low"]), math.log(bounds["high"])))
                for name, bounds in sorted(SEARCH_SPACE.items())
            }
            source, status = "sampler", rng.choice(statuses)
        config = LicchaviConfig.model_validate({**base, **params})
        created = start + timedelta(seconds=2 * number)
        finished = created + timedelta(seconds=1.5)
        tags = ["bench"] + (["baseline"] if number == 0 else [])
        if rng.random() < 0.3:
            tags.append("fast")
        units = [synthetic_metrics(rng, params) for _ in range(3)]
        unit_status = {
            "succeeded": ["succeeded"] * 3,
            "pruned": ["succeeded", "cancelled", "cancelled"],
            "failed": ["succeeded", "failed", "cancelled"],
            "running": ["succeeded", "running", "queued"],
            "pending": ["pending"] * 3,
        }[status]
        done = [
            unit for unit, state in zip(units, unit_status, strict=True) if state == "succeeded"
        ]
        means = {
            name: sum(unit[name] for unit in done) / len(done) for name in METRIC_NAMES if done
        }
        trial_rows.append(
            {
                "number": number,
                "status": status,
                "source": source,
                "params": params,
                "config": config.model_dump(mode="json"),
                "config_hash": config_hash(config),
                "optuna_trial_id": number,
                "told_at": finished if status in ("succeeded", "pruned", "failed") else None,
                "metrics": means if done else {},
                "objective": means["heldout_accuracy"] if done and status != "failed" else None,
                "n_succeeded": len(done),
                "tags_text": "," + "".join(f"{tag}," for tag in tags),
                "created_at": created,
                "finished_at": finished if status not in ("running", "pending") else None,
            }
        )
        evaluations = []
        for unit_index, (unit, state) in enumerate(zip(units, unit_status, strict=True)):
            epochs = int(unit["epochs"])
            history = {
                term: [round(rng.uniform(0, 50) / (epoch + 1), 6) for epoch in range(epochs)]
                for term in HISTORY_TERMS
            }
            ran = state in ("succeeded", "failed", "running", "cancelled")
            evaluations.append(
                {
                    "unit_index": unit_index,
                    "seed": unit_index,
                    "fold": 1,
                    "status": state,
                    "attempt": 1 if ran else 0,
                    "progress": 1.0 if state == "succeeded" else 0.0,
                    "metrics": unit if state == "succeeded" else None,
                    "history": history if state == "succeeded" else None,
                    "log": "engine: trained\n" * 20 if ran else None,
                    "error": "ValueError: diverged" if state == "failed" else None,
                    "config_hash": config_hash(config),
                    "worker": "bench:1:0" if ran else None,
                    "created_at": created,
                    "started_at": created if ran else None,
                    "finished_at": finished if state in ("succeeded", "failed") else None,
                }
            )
        evaluation_rows.append(evaluations)
    return spec, trial_rows, evaluation_rows


def insert_listing_data(database_url: str, trials: int, seed: int) -> int:
    from sqlalchemy import create_engine, insert, update
    from sqlmodel import Session

    from app.models import Sweep, SweepEvaluation, SweepTrial
    from app.sweeps import control

    sweep_table = Sweep.__table__  # type: ignore[attr-defined]
    trial_table = SweepTrial.__table__  # type: ignore[attr-defined]
    evaluation_table = SweepEvaluation.__table__  # type: ignore[attr-defined]
    spec_content, trial_rows, evaluation_rows = listing_rows(trials, seed)
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            sweep = control.submit(session, control.validate_spec(spec_content))
            session.commit()
            assert sweep.id is not None
            sweep_id = int(sweep.id)
        with engine.begin() as connection:
            # Completed: no scheduler would touch it (none runs here anyway).
            connection.execute(
                update(sweep_table)
                .where(sweep_table.c.id == sweep_id)
                .values(
                    status="completed",
                    started_at=trial_rows[0]["created_at"],
                    finished_at=trial_rows[-1]["created_at"],
                )
            )
            ids = connection.execute(
                insert(trial_table).returning(trial_table.c.id, sort_by_parameter_order=True),
                [{"sweep_id": sweep_id, **row} for row in trial_rows],
            ).scalars()
            flat = [
                {"sweep_id": sweep_id, "trial_id": trial_id, **evaluation}
                for trial_id, evaluations in zip(ids, evaluation_rows, strict=True)
                for evaluation in evaluations
            ]
            for start in range(0, len(flat), 3000):
                connection.execute(insert(evaluation_table), flat[start : start + 3000])
        with engine.connect() as connection:
            # What autovacuum would have done by the time anyone lists 10,000 trials.
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE sweep_trials, sweep_evaluations"
            )
    finally:
        engine.dispose()
    return sweep_id


def time_requests(
    client: httpx.Client, path: str, params: dict[str, Any], count: int
) -> tuple[list[float], dict[str, Any]]:
    body: dict[str, Any] = {}
    for _ in range(3):  # warm: the first requests compile statements and fill caches
        started = time.perf_counter()
        client.get(path, params=params).raise_for_status()
        if time.perf_counter() - started > 1.0:
            break  # a request this slow is not dominated by first-time costs
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path, params=params)
        timings.append(time.perf_counter() - started)
        response.raise_for_status()
        body = response.json()
    return timings, body


def listing_requests(sweep_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("trials, no filter", f"/api/v1/sweeps/{sweep_id}/trials", {"limit": 50}),
        (
            "trials, filter + sort=-objective",
            f"/api/v1/sweeps/{sweep_id}/trials",
            {"limit": 50, "filter": FILTER, "sort": "-objective"},
        ),
        ("leaderboard", f"/api/v1/sweeps/{sweep_id}/leaderboard", {"limit": 50}),
    ]


def timed(call: Callable[[], T]) -> tuple[T, float]:
    call()  # warm
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def listing_statements(table: Any, sweep_id: int) -> dict[str, Any]:
    """The two statements of a filtered, sorted trial page (count and page), and an unfiltered
    page, as the service builds them."""
    from sqlalchemy import and_, func, select

    from app.sweeps.query import parse_filter, parse_sort
    from app.sweeps.results import TRIAL_COLUMNS

    columns = [table.c[column.name] for column in TRIAL_COLUMNS]
    condition = and_(table.c.sweep_id == sweep_id, parse_filter(FILTER, table))
    return {
        "count, filtered": select(func.count()).select_from(table).where(condition),
        "page, filtered, sort=-objective": select(*columns)
        .where(condition)
        .order_by(*parse_sort("-objective", table))
        .limit(50),
        "page, no filter": select(*columns)
        .where(table.c.sweep_id == sweep_id)
        .order_by(table.c.number, table.c.id)
        .limit(50),
    }


def profile_listing(database_url: str, sweep_id: int) -> None:
    """Where the time goes, in this process: cProfile of each service call, and the plans of
    the listing's statements."""
    from sqlalchemy import JSON, Column, MetaData, Table, create_engine
    from sqlalchemy.dialects.postgresql import JSONB
    from sqlmodel import Session

    from app.models import Sweep
    from app.sweeps import results
    from app.sweeps import stats as sweep_stats

    trial_table = results.Trial
    engine = create_engine(database_url)
    calls = {
        "trials, no filter": lambda session: results.list_trials(
            session, sweep_id, filter_text=None, sort_text=None, limit=50, offset=0
        ),
        "trials, filter + sort=-objective": lambda session: results.list_trials(
            session, sweep_id, filter_text=FILTER, sort_text="-objective", limit=50, offset=0
        ),
        "leaderboard": lambda session: results.leaderboard(
            session,
            sweep_id,
            metric=None,
            direction=None,
            confidence=0.95,
            limit=50,
            offset=0,
        ),
    }
    try:
        for label, call in calls.items():
            with Session(engine) as session:
                call(session)  # warm
                profiler = cProfile.Profile()
                started = time.perf_counter()
                profiler.enable()
                call(session)
                profiler.disable()
                elapsed = time.perf_counter() - started
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(18)
            print(f"\n--- profile: {label} ({ms(elapsed)} in process) ---")
            print("\n".join(out.getvalue().splitlines()[4:]))
        with Session(engine) as session:
            sweep = session.get(Sweep, sweep_id)
            assert sweep is not None
            incumbent = results._incumbent_id(session, sweep)
            units, query_s = timed(
                lambda: results._unit_values(session, sweep_id, sweep.objective_metric)
            )
        _, ranked_s = timed(
            lambda: sweep_stats.leaderboard(units, direction="maximize", incumbent_id=incumbent)
        )
        _, unpaired_s = timed(
            lambda: sweep_stats.leaderboard(units, direction="maximize", incumbent_id=None)
        )
        print(
            f"\nleaderboard parts: read {len(units)} unit values {ms(query_s)}; rank with paired "
            f"tests {ms(ranked_s)}; rank without (bootstrap intervals only) {ms(unpaired_s)}"
        )
        with engine.connect() as connection:
            # The same statements on a copy whose JSON columns are jsonb (parsed once, on write).
            connection.exec_driver_sql(
                "CREATE TEMP TABLE sweep_trials_jsonb AS SELECT id, sweep_id, number, status, "
                "source, params::jsonb AS params, config_hash, parent_id, "
                "overrides::jsonb AS overrides, metrics::jsonb AS metrics, objective, "
                "n_succeeded, tags_text, created_at, finished_at FROM sweep_trials"
            )
            connection.exec_driver_sql("ANALYZE sweep_trials_jsonb")
            copy = Table(
                "sweep_trials_jsonb",
                MetaData(),
                *(
                    Column(column.name, JSONB if isinstance(column.type, JSON) else column.type)
                    for column in trial_table.c
                    if column.name in {c.name for c in results.TRIAL_COLUMNS}
                ),
            )
            for table in (trial_table, copy):
                for label, statement in listing_statements(table, sweep_id).items():
                    compiled = str(
                        statement.compile(
                            dialect=connection.dialect, compile_kwargs={"literal_binds": True}
                        )
                    )
                    runs = []
                    for _ in range(7):
                        started = time.perf_counter()
                        connection.exec_driver_sql(compiled).all()
                        runs.append(time.perf_counter() - started)
                    print(f"{table.name}: {label}: median {ms(float(np.median(runs)))}")
                    if table is trial_table:
                        plan = connection.exec_driver_sql(
                            "EXPLAIN (ANALYZE, BUFFERS) " + compiled
                        ).scalars()
                        print("\n".join(plan))
    finally:
        engine.dispose()


def listing(args: argparse.Namespace) -> None:
    measured = []
    with stack(0, import_xs=False, keep_logs=args.keep_logs) as running:
        started = time.perf_counter()
        sweep_id = insert_listing_data(running.database_url, args.trials, args.seed)
        print(
            f"inserted {args.trials} trials and {3 * args.trials} evaluations "
            f"in {time.perf_counter() - started:.1f} s"
        )
        with psycopg.connect(pg_url(running.database_url)) as connection:
            sizes = connection.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('sweep_trials')), "
                "pg_size_pretty(pg_total_relation_size('sweep_evaluations'))"
            ).fetchone()
        print(
            f"sweep_trials {sizes[0] if sizes else '?'}, sweep_evaluations "
            f"{sizes[1] if sizes else '?'} on disk"
        )
        load_before = wait_for_quiet(args.max_load, args.quiet_wait)
        with httpx.Client(base_url=running.base, headers=running.headers, timeout=120) as client:
            for label, path, params in listing_requests(sweep_id):
                timings, body = time_requests(client, path, params, args.requests)
                measured.append((label, timings, body, load_average()))
                print(f"{label}: median {ms(float(np.median(timings)))}")
        load_after = load_average()
        if args.profile:
            profile_listing(running.database_url, sweep_id)
    header = ["request (limit=50)", "matching", "n", "median", "p95", "max", "load", "target"]
    table = []
    for label, timings, body, load in measured:
        summary = stats(timings)
        table.append(
            [
                label,
                str(body.get("total")),
                str(len(timings)),
                ms(summary["median"]),
                ms(summary["p95"]),
                ms(summary["max"]),
                f"{load:.2f}",
                "< 200 ms",
            ]
        )
    print_table(f"listing at {args.trials} trials, one API process", header, table)
    print_markdown(
        header,
        table,
        [
            f"{args.trials} trials ({3 * args.trials} evaluations) inserted directly, "
            f"filter `{FILTER}`; sequential requests over HTTP to uvicorn (1 process) after up "
            "to 3 warm-up requests each (1 when it takes over a second); load average "
            f"{load_before:.2f} → {load_after:.2f}."
        ],
    )


# --- entry point ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-load", type=float, default=0.6, help="quiet: 1-min load below")
    parser.add_argument(
        "--quiet-wait", type=float, default=600, help="seconds to wait for a quiet machine"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds one sweep may take")
    parser.add_argument("--keep-logs", action="store_true", help="keep API and worker logs")
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("overhead", help="per-evaluation overhead, one worker")
    command.add_argument("--evaluations", type=int, default=120, help="at least this many")
    command.add_argument("--folds", type=int, default=5)
    command.add_argument("--parallel", type=int, default=2, help="the sweep's max_parallel")
    command.set_defaults(run=overhead)

    command = commands.add_parser("xs100", help="100 trials on xs, two workers")
    command.add_argument("--trials", type=int, default=100)
    command.add_argument("--folds", default="2,5", help="comma-separated: one sweep for each")
    command.add_argument("--method", default="tpe", choices=("random", "tpe", "sobol"))
    command.add_argument("--parallel", type=int, default=4, help="the sweep's max_parallel")
    command.add_argument(
        "--scheduler-interval",
        type=float,
        default=None,
        help="SWEEP_SCHEDULER_INTERVAL_SECONDS for the workers (default: the service's, 0.5)",
    )
    command.set_defaults(run=xs100)

    command = commands.add_parser("listing", help="list/filter/leaderboard at 10,000 trials")
    command.add_argument("--trials", type=int, default=10_000)
    command.add_argument("--requests", type=int, default=40, help="timed requests per endpoint")
    command.add_argument("--seed", type=int, default=7)
    command.add_argument("--profile", action="store_true", help="profile the service calls too")
    command.set_defaults(run=listing)

    args = parser.parse_args()

    def stop(signum: int, _: Any) -> None:
        # SIGTERM becomes an exception, so that the finally blocks stop workers and drop data.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    print(
        json.dumps(
            {
                "command": args.command,
                "load_average": round(load_average(), 2),
                "cores": os.cpu_count(),
            }
        )
    )
    with exclusive(args.quiet_wait + args.timeout):
        args.run(args)


if __name__ == "__main__":
    main()
