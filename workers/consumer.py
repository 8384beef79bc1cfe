"""The worker's broker consumer: reconnects forever, at a short fixed interval, after an outage."""

from functools import wraps
from typing import Any

from celery.worker.consumer import Consumer
from kombu import Connection

from app.core.config import get_settings


class SteadyReconnectConsumer(Consumer):
    """Celery's consumer, retrying a lost broker every BROKER_RECONNECT_INTERVAL_SECONDS.

    Celery hands kombu's defaults to `ensure_connection`: a wait that grows by 2 s per attempt up
    to 30 s, so a worker could notice a broker back after an outage only half a minute later,
    and none of its settings changes that. (The retry count is `broker_connection_max_retries`,
    set to None, forever, in the app's configuration.)
    """

    def ensure_connected(self, conn: Connection) -> Connection:
        interval = get_settings().broker_reconnect_interval_seconds
        ensure = conn.ensure_connection

        @wraps(ensure)
        def steady(*args: Any, **kwargs: Any) -> Connection:
            kwargs.update(interval_start=interval, interval_step=0, interval_max=interval)
            return ensure(*args, **kwargs)

        conn.ensure_connection = steady  # type: ignore[method-assign]  # this connection only
        return super().ensure_connected(conn)
