"""The Celery application and its configuration, read lazily from the service settings: what
the API needs to send wake-ups, and what workers run (`workers.celery_app` adds their signal
handlers); queues `cpu` and `gpu`. The task modules are named here, imported only by a worker."""

from typing import Any

from celery import Celery
from kombu import Queue

from app.core.broker import SQL_PREFIX
from app.core.config import get_settings
from app.core.queues import WORKER_QUEUES

celery_app = Celery(
    "licchavi",
    include=[
        "workers.heartbeat",
        "workers.metrics",
        "workers.tasks.maintenance",
        "workers.tasks.sweeps",
        "workers.tasks.training",
        "workers.tasks.work",
    ],
)


@celery_app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    # Read settings when Celery first needs its configuration, not at import time.
    sender.conf.update(celery_config())


def reconfigure() -> None:
    """Re-read the settings and drop pooled broker connections (when settings change in tests)."""
    if celery_app.configured:
        celery_app.close()
        # close() keeps the producer pool bound to the old broker; forget it too.
        celery_app.amqp._producer_pool = None
        celery_app.conf.update(celery_config())


def celery_config() -> dict[str, Any]:
    settings = get_settings()
    settings.ensure_data_dir()
    broker_url = settings.resolved_broker_url
    transport_options: dict[str, Any] = {}
    transport = None  # from the URL's scheme
    if broker_url.startswith(("redis://", "rediss://")):
        # Our own leases decide when work is redone; a short visibility timeout would make Redis
        # hand a long training task to a second worker while the first is still running it.
        transport_options["visibility_timeout"] = 24 * 3600
        transport = "app.core.broker:Transport"  # survives an outage while consuming
    elif broker_url.startswith(SQL_PREFIX):
        # A transport named in the URL's prefix wins over `broker_transport`: strip it.
        broker_url = broker_url.removeprefix(SQL_PREFIX)
        transport = "app.core.broker:SQLTransport"  # deletes what it delivers
    # (kombu's SQLAlchemy transport hands every transport option to create_engine, so the
    # embedded broker keeps its default one-second polling interval.)
    return dict(
        broker_url=broker_url,
        broker_transport=transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        # Celery's default gives up after 100 attempts (about 48 minutes with its growing waits)
        # and the worker exits for good; the broker coming back hours later must still be seen.
        broker_connection_max_retries=None,
        worker_consumer="workers.consumer:SteadyReconnectConsumer",
        # A run keeps training through a broker outage: its lease, not the broker connection,
        # says who owns it (this is also Celery 5's default, which warns until it is set).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        task_default_queue="cpu",
        task_queues=tuple(Queue(name) for name in WORKER_QUEUES),
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
