"""A worker's own Prometheus metrics, served by its main process on WORKER_METRICS_PORT (0: off).

Work happens in pool processes, so the figures are kept in prometheus_client's multiprocess
mode: each process writes its counters to memory-mapped files in a directory of this worker's
own, and the main process's HTTP server sums them when scraped. Counts are what this worker did
since it started (a scrape of every worker sums the service); the database-wide gauges are on the
API's `/metrics`.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery.signals import task_postrun, worker_init, worker_ready, worker_shutdown
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, values
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.config import get_settings
from app.operations.metrics import DURATION_BUCKETS

logger = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A run is trained criterion by criterion: "trained" is a criterion done while others of its run
# remain, "succeeded" the one that published the run.
RUN_OUTCOMES = ("succeeded", "trained", "failed", "cancelled", "lease_lost", "handed_off")
EVALUATION_OUTCOMES = ("succeeded", "failed", "cancelled", "lost")
LEASE_KINDS = ("run", "evaluation")


@dataclass(frozen=True)
class Instruments:
    tasks: Counter
    run_durations: Histogram
    evaluation_durations: Histogram
    lease_renewals: Counter
    leases_lost: Counter
    heartbeats: Counter


@lru_cache(maxsize=1)
def instruments() -> Instruments:
    """The metrics, made on first use: after `_multiprocess` chose how they store values."""
    made = Instruments(
        tasks=Counter(
            "licchavi_worker_tasks",
            "Celery tasks this worker ran, by task name and final state.",
            ["task", "state"],
            registry=None,
        ),
        run_durations=Histogram(
            "licchavi_worker_run_duration_seconds",
            "Claim to end of the run criteria this worker trained (or of a run's listing, when"
            " the run ended there), by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        evaluation_durations=Histogram(
            "licchavi_worker_evaluation_duration_seconds",
            "Claim to end of the sweep evaluations this worker ran, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        lease_renewals=Counter(
            "licchavi_worker_lease_renewals",
            "Leases of run criteria (each with its run's) and evaluations this worker renewed.",
            ["kind"],
            registry=None,
        ),
        leases_lost=Counter(
            "licchavi_worker_leases_lost",
            "Run criteria and evaluations this worker was running when another worker took them"
            " over (or their run ended).",
            ["kind"],
            registry=None,
        ),
        heartbeats=Counter(
            "licchavi_worker_heartbeats",
            "Heartbeat rows written, skipped (SQLite busy) or failed by this worker's processes.",
            ["result"],
            registry=None,
        ),
    )
    # Every series exists from the start, at 0, so rates and dashboards see it before it moves.
    for outcome in RUN_OUTCOMES:
        made.run_durations.labels(outcome)
    for outcome in EVALUATION_OUTCOMES:
        made.evaluation_durations.labels(outcome)
    for kind in LEASE_KINDS:
        made.lease_renewals.labels(kind)
        made.leases_lost.labels(kind)
    for result in ("written", "skipped", "failed"):
        made.heartbeats.labels(result)
    return made


def run_finished(outcome: str, seconds: float) -> None:
    label = outcome.replace(" ", "_")
    if label in RUN_OUTCOMES:
        instruments().run_durations.labels(label).observe(seconds)
    if label == "lease_lost":
        instruments().leases_lost.labels("run").inc()


def evaluation_finished(outcome: str, seconds: float) -> None:
    if outcome in EVALUATION_OUTCOMES:
        instruments().evaluation_durations.labels(outcome).observe(seconds)
    if outcome == "lost":
        instruments().leases_lost.labels("evaluation").inc()


def lease_renewed(kind: str) -> None:
    instruments().lease_renewals.labels(kind).inc()


def heartbeat_written(result: str) -> None:
    instruments().heartbeats.labels(result).inc()


def registry(directory: str) -> CollectorRegistry:
    """What the port serves: every process's files summed, and the main process's own figures."""
    served = CollectorRegistry()
    MultiProcessCollector(served, path=directory)
    ProcessCollector(registry=served)
    return served


_served: list[Any] = []  # (directory, server or None)


@worker_init.connect
def _multiprocess(**_: Any) -> None:
    # In the worker's main process, before its pool processes are forked: they inherit the
    # directory through the environment, and write their own files in it.
    if not get_settings().worker_metrics_port:
        return
    directory = tempfile.mkdtemp(prefix="licchavi-worker-metrics-")
    os.environ[MULTIPROCESS_ENV] = directory
    # prometheus_client picks the value store when first imported, which the API modules the
    # worker loads may have done already: pick again, now that the directory is set.
    values.ValueClass = values.get_value_class()
    _served.append([directory, None])


@worker_ready.connect
def _serve(**_: Any) -> None:
    if not _served:
        return
    from prometheus_client import start_http_server

    settings = get_settings()
    instruments()  # the zero series, from this process's file
    try:
        server, _thread = start_http_server(
            settings.worker_metrics_port,
            addr=settings.worker_metrics_host,
            registry=registry(_served[0][0]),
        )
    except OSError as exc:
        # Another worker on this host holds the port: this one runs on, unscraped.
        logger.error(
            "worker metrics not served on %s:%s: %s",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            exc,
        )
        return
    _served[0][1] = server
    logger.info(
        "worker metrics on http://%s:%s/metrics",
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )


@worker_shutdown.connect
def _stop_serving(**_: Any) -> None:
    while _served:
        directory, server = _served.pop()
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


@task_postrun.connect
def _count_task(sender: Any = None, state: str | None = None, **_: Any) -> None:
    name = getattr(sender, "name", None) or "unknown"
    instruments().tasks.labels(name, state or "UNKNOWN").inc()
