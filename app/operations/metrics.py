"""What an operator watches, read from the database when `/metrics` is scraped: runs and
evaluations by status, how long work has waited, how stale the published scores are, lost leases,
durations and worker heartbeats.

The database is the record of every job, so these gauges are the same whichever API process is
scraped, survive restarts, and need nothing from the workers. One read serves every scrape for
`OPERATIONS_METRICS_CACHE_SECONDS`, so many scrapers cost one set of queries.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from app.core.db import log_background_failure
from app.runs.models import RUN_STATUSES, RUN_TRIGGERS
from app.sweeps.models import EVALUATION_STATUSES

logger = logging.getLogger(__name__)

# Seconds; a run of the demo takes under one, a 5M-comparison run about a minute.
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass
class Reading:
    """One read of the database: everything the metrics say, at `at`."""

    at: datetime
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_due_run_at: datetime | None = None
    expired_run_leases: int = 0
    run_reclaims: int = 0
    evaluations: dict[str, int] = field(default_factory=dict)
    oldest_queued_evaluation_at: datetime | None = None
    evaluation_reclaims: int = 0
    published_at: dict[str, datetime] = field(default_factory=dict)
    oldest_unpublished_change_at: dict[str, datetime | None] = field(default_factory=dict)
    run_durations: dict[str, tuple[list[int], float, int]] = field(default_factory=dict)
    evaluation_durations: tuple[list[int], float, int] = ([], 0.0, 0)
    workers_seen_at: dict[str, datetime] = field(default_factory=dict)
    workers_busy: dict[str, bool] = field(default_factory=dict)


def _aware(value: Any) -> datetime | None:
    """SQLite hands timestamps back as text through raw SQL, sometimes without a zone."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _seconds(dialect: str, start: str, end: str) -> str:
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    # julianday's day fractions are off by microseconds: rounded to the millisecond, a 30 s run
    # falls in the 30 s bucket.
    return f"round((julianday({end}) - julianday({start})) * 86400.0, 3)"


def _histogram(connection: Connection, table: str, dialect: str, where: str, group: str) -> Any:
    """Cumulative bucket counts, sum and count of finished_at − started_at, per `group`."""
    duration = _seconds(dialect, "started_at", "finished_at")
    buckets = ", ".join(
        f"count(*) FILTER (WHERE {duration} <= {bound})" for bound in DURATION_BUCKETS
    )
    rows = connection.execute(
        text(
            f"SELECT {group} AS kind, {buckets}, coalesce(sum({duration}), 0), count(*)"
            f" FROM {table}"
            f" WHERE started_at IS NOT NULL AND finished_at IS NOT NULL AND {where}"
            " GROUP BY kind"
        )
    ).all()
    return {row[0]: ([int(n) for n in row[1:-2]], float(row[-2]), int(row[-1])) for row in rows}


def read(engine: Engine) -> Reading:
    """Every figure in a handful of indexed queries (one connection, one snapshot on PostgreSQL)."""
    dialect = engine.dialect.name
    with engine.connect() as connection:
        reading = Reading(at=datetime.now(UTC))
        now = {"now": reading.at}
        for status, trigger, count in connection.execute(
            text("SELECT status, trigger, count(*) FROM training_runs GROUP BY status, trigger")
        ):
            reading.runs[(status, trigger)] = int(count)
        oldest, expired, reclaims = connection.execute(
            text(
                "SELECT (SELECT min(not_before) FROM training_runs"
                "        WHERE status = 'queued' AND not_before <= :now),"
                # A run is lost if its own lease lapsed, or a criterion's in training did
                # (its worker died while another criterion keeps the run's lease fresh).
                " (SELECT count(*) FROM training_runs r WHERE r.status = 'running'"
                "        AND (r.lease_expires_at < :now OR EXISTS (SELECT 1"
                "             FROM training_run_criteria c WHERE c.run_id = r.id"
                "             AND c.status = 'running' AND c.lease_expires_at < :now))),"
                # Training is reclaimed criterion by criterion; a run's own claims count only
                # while it has no criteria (a takeover of a listed run retakes its criteria).
                " (SELECT coalesce(sum(attempt - 1), 0) FROM training_run_criteria"
                "        WHERE attempt > 1)"
                " + (SELECT coalesce(sum(r.attempt - 1), 0) FROM training_runs r"
                "        WHERE r.attempt > 1 AND NOT EXISTS (SELECT 1"
                "             FROM training_run_criteria c WHERE c.run_id = r.id))"
            ),
            now,
        ).one()
        reading.oldest_due_run_at = _aware(oldest)
        reading.expired_run_leases = int(expired)
        reading.run_reclaims = int(reclaims)
        for status, count in connection.execute(
            text("SELECT status, count(*) FROM sweep_evaluations GROUP BY status")
        ):
            reading.evaluations[status] = int(count)
        oldest, reclaims = connection.execute(
            text(
                "SELECT (SELECT min(coalesce(wakeup_sent_at, created_at)) FROM sweep_evaluations"
                "        WHERE status = 'queued'),"
                " (SELECT coalesce(sum(attempt - 1), 0) FROM sweep_evaluations WHERE attempt > 1)"
            )
        ).one()
        reading.oldest_queued_evaluation_at = _aware(oldest)
        reading.evaluation_reclaims = int(reclaims)
        # A change of comparisons queues an auto run of its criterion, so the oldest auto run
        # created after the published run's snapshot is the oldest change readers do not see yet
        # (failed runs included: their change is still not served).
        for name, published_at, oldest_change in connection.execute(
            text(
                "SELECT c.name, p.published_at,"
                " (SELECT min(q.created_at) FROM training_runs q"
                "  WHERE q.trigger = 'auto' AND q.scope = c.name"
                "  AND (r.snapshot_at IS NULL OR q.created_at > r.snapshot_at))"
                " FROM criteria c LEFT JOIN published_runs p ON p.criterion_id = c.id"
                " LEFT JOIN training_runs r ON r.id = p.run_id"
            )
        ):
            if published_at is not None:
                reading.published_at[name] = _aware(published_at)  # type: ignore[assignment]
            reading.oldest_unpublished_change_at[name] = _aware(oldest_change)
        reading.run_durations = _histogram(
            connection, "training_runs", dialect, "status = 'succeeded'", "trigger"
        )
        reading.evaluation_durations = _histogram(
            connection, "sweep_evaluations", dialect, "status = 'succeeded'", "'all'"
        ).get("all", ([0] * len(DURATION_BUCKETS), 0.0, 0))
        for worker, seen_at, run_id, evaluation_id in connection.execute(
            text(
                "SELECT worker, seen_at, current_run_id, current_evaluation_id"
                " FROM worker_heartbeats"
            )
        ):
            reading.workers_seen_at[worker] = _aware(seen_at)  # type: ignore[assignment]
            reading.workers_busy[worker] = run_id is not None or evaluation_id is not None
    return reading


def _age(reading: Reading, moment: datetime | None) -> float:
    return 0.0 if moment is None else max(0.0, (reading.at - moment).total_seconds())


def _buckets(counts: list[int], total: int) -> list[tuple[str, float]]:
    bounds = [str(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
    return list(zip(bounds, [*counts, total], strict=True))


def metrics(reading: Reading) -> Iterator[Metric]:
    """The Prometheus families of one reading."""
    runs = GaugeMetricFamily(
        "licchavi_training_runs",
        "Training runs by status and trigger.",
        labels=["status", "trigger"],
    )
    for status in RUN_STATUSES:
        for trigger in RUN_TRIGGERS:
            runs.add_metric([status, trigger], reading.runs.get((status, trigger), 0))
    yield runs
    yield GaugeMetricFamily(
        "licchavi_oldest_due_run_wait_seconds",
        "How long the oldest queued run has been due without a worker starting it (0: none).",
        value=_age(reading, reading.oldest_due_run_at),
    )
    yield GaugeMetricFamily(
        "licchavi_running_runs_with_expired_lease",
        "Running runs whose worker stopped renewing the lease (the run's, or a criterion's in"
        " training); recovery should take them over.",
        value=reading.expired_run_leases,
    )
    yield CounterMetricFamily(
        "licchavi_run_reclaims",
        "Claims of training runs' criteria (of a run's, before its criteria are listed) beyond"
        " their first: leases that expired or were handed off.",
        value=reading.run_reclaims,
    )
    evaluations = GaugeMetricFamily(
        "licchavi_sweep_evaluations", "Sweep evaluations by status.", labels=["status"]
    )
    for status in EVALUATION_STATUSES:
        evaluations.add_metric([status], reading.evaluations.get(status, 0))
    yield evaluations
    yield GaugeMetricFamily(
        "licchavi_oldest_queued_evaluation_wait_seconds",
        "How long the oldest queued sweep evaluation has waited for a worker (0: none).",
        value=_age(reading, reading.oldest_queued_evaluation_at),
    )
    yield CounterMetricFamily(
        "licchavi_sweep_evaluation_reclaims",
        "Claims of sweep evaluations beyond their first (a worker lost mid-evaluation).",
        value=reading.evaluation_reclaims,
    )
    lag = GaugeMetricFamily(
        "licchavi_scores_freshness_lag_seconds",
        "Age of the oldest change of comparisons not yet in the published scores (0: none).",
        labels=["criterion"],
    )
    age = GaugeMetricFamily(
        "licchavi_published_scores_age_seconds",
        "Time since the criterion's scores were last published.",
        labels=["criterion"],
    )
    for name, oldest in sorted(reading.oldest_unpublished_change_at.items()):
        lag.add_metric([name], _age(reading, oldest))
        if name in reading.published_at:
            age.add_metric([name], _age(reading, reading.published_at[name]))
    yield lag
    yield age
    durations = HistogramMetricFamily(
        "licchavi_training_run_duration_seconds",
        "Start to finish of succeeded training runs.",
        labels=["trigger"],
    )
    for trigger, (counts, total_seconds, count) in sorted(reading.run_durations.items()):
        durations.add_metric([trigger], _buckets(counts, count), total_seconds)
    yield durations
    counts, total_seconds, count = reading.evaluation_durations
    evaluation_durations = HistogramMetricFamily(
        "licchavi_sweep_evaluation_duration_seconds",
        "Start to finish of succeeded sweep evaluations.",
    )
    evaluation_durations.add_metric(
        [], _buckets(counts or [0] * len(DURATION_BUCKETS), count), total_seconds
    )
    yield evaluation_durations
    heartbeats = GaugeMetricFamily(
        "licchavi_worker_heartbeat_age_seconds",
        "Time since each worker last reported in.",
        labels=["worker"],
    )
    busy = GaugeMetricFamily(
        "licchavi_worker_busy",
        "1 when the worker process's last heartbeat named a run or evaluation it works on.",
        labels=["worker"],
    )
    for worker, seen_at in sorted(reading.workers_seen_at.items()):
        heartbeats.add_metric([worker], _age(reading, seen_at))
        busy.add_metric([worker], int(reading.workers_busy.get(worker, False)))
    yield heartbeats
    yield busy


class OperationsCollector(Collector):
    """Registered on the API's registry; reads the database at most once per `cache_seconds`."""

    def __init__(self, engine: Callable[[], Engine], cache_seconds: float) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.lock = threading.Lock()
        self.reading: Reading | None = None
        self.read_at = 0.0

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            if self.reading is None or time.monotonic() - self.read_at >= self.cache_seconds:
                try:
                    self.reading = read(self.engine())
                    self.read_at = time.monotonic()
                except Exception as exc:
                    # A scrape must still answer (process and HTTP metrics) when the database
                    # does not; `licchavi_operations_up` says the figures are missing.
                    log_background_failure(
                        logger,
                        "operations metrics: the database could not be read",
                        exc,
                        then="licchavi_operations_up is 0",
                    )
                    yield GaugeMetricFamily(
                        "licchavi_operations_up", "1 when the database was read.", value=0
                    )
                    return
            reading = self.reading
        yield GaugeMetricFamily("licchavi_operations_up", "1 when the database was read.", value=1)
        yield from metrics(reading)
