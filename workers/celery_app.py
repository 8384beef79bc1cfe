"""The worker's Celery application (`app.core.celery_app`'s), with the signal handlers a worker
process needs: parent death and hand-off (`workers.lifetime`), a fresh database engine after
fork, and the service's log format."""

from typing import Any

from celery.signals import setup_logging, worker_process_init

from app.core.celery_app import celery_app, celery_config, reconfigure
from app.core.config import get_settings
from workers import lifetime  # noqa: F401  (its signal handlers: parent death, hand-off)

__all__ = ["celery_app", "celery_config", "reconfigure"]


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # A pooled connection inherited through fork must never be shared with the parent.
    from app.core.db import dispose_engine

    dispose_engine(close=False)


@setup_logging.connect
def _configure_logging(loglevel: Any = None, **_: Any) -> None:
    # Replaces Celery's own set-up: the worker logs in LOG_FORMAT, with the request id and the
    # run or evaluation bound while a claimed job runs (pool processes inherit it by fork).
    import logging

    from app.core.logs import configure_logging

    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    configure_logging(str(level or settings.log_level), settings.log_format)
