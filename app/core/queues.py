"""The broker's queues as `/metrics` shows them: messages waiting in each worker queue.

Asked through kombu, so the same code reads Redis (the lists' lengths, all priorities) and the
embedded SQLite broker (its visible rows). A scrape costs one short broker connection at most
once per `OPERATIONS_METRICS_CACHE_SECONDS`; a broker that does not answer within a couple of
seconds makes `licchavi_broker_up` 0 rather than a slow scrape.
"""

import logging
import threading
import time
from collections.abc import Iterable

from kombu import Connection
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.config import get_settings

logger = logging.getLogger(__name__)

# The queues workers consume (`licchavi worker --queues`); Celery's app declares the same.
WORKER_QUEUES = ("cpu", "gpu")
BROKER_TIMEOUT_SECONDS = 2.0


def queue_depths(broker_url: str, queues: Iterable[str] = WORKER_QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, not yet handed to a worker."""
    redis = broker_url.startswith(("redis://", "rediss://"))
    options = (
        {"socket_timeout": BROKER_TIMEOUT_SECONDS, "socket_connect_timeout": BROKER_TIMEOUT_SECONDS}
        if redis
        else {}  # kombu's SQLAlchemy transport hands its options to create_engine
    )
    with Connection(
        broker_url, connect_timeout=BROKER_TIMEOUT_SECONDS, transport_options=options
    ) as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.channel()
        try:
            return {
                queue: int(channel.queue_declare(queue=queue, passive=False).message_count)
                for queue in queues
            }
        finally:
            channel.close()


class QueueDepthCollector(Collector):
    """Registered on the API's registry; asks the broker at most once per `cache_seconds`."""

    def __init__(self, cache_seconds: float) -> None:
        self.cache_seconds = cache_seconds
        self.lock = threading.Lock()
        self.depths: dict[str, int] | None = None
        self.read_at = 0.0

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            if not self.read_at or time.monotonic() - self.read_at >= self.cache_seconds:
                try:
                    self.depths = queue_depths(get_settings().resolved_broker_url)
                except Exception as exc:
                    logger.warning("queue metrics: the broker could not be read (%s)", exc)
                    self.depths = None
                # A failure is kept as long as a reading: while the broker is down, scrapes do
                # not each wait for its timeout.
                self.read_at = time.monotonic()
            depths = self.depths
        yield GaugeMetricFamily(
            "licchavi_broker_up",
            "1 when the broker answered for this scrape.",
            value=int(depths is not None),
        )
        if depths is None:
            return
        waiting = GaugeMetricFamily(
            "licchavi_queue_messages",
            "Wake-up messages waiting in each worker queue, not yet taken by a worker.",
            labels=["queue"],
        )
        for queue, count in sorted(depths.items()):
            waiting.add_metric([queue], count)
        yield waiting
