"""Readiness probes: can we reach the database and the Celery broker right now, and can
sweeps run here?"""

from sqlalchemy import create_engine, text

from app.core.config import Settings
from app.core.db import get_engine, read_only
from app.sweeps.study import missing_extra


def check_sweeps() -> str | None:
    """None when sweeps can run here (their optional extra is installed), else why not."""
    return missing_extra()


def check_database() -> str | None:
    """None when the database answers, else a one-line reason."""
    try:
        with read_only(get_engine()).connect() as connection:  # never waits for a writer
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"database: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


def check_broker(settings: Settings) -> str | None:
    """None when the broker answers, else a one-line reason."""
    url = settings.resolved_broker_url
    timeout = settings.readiness_timeout_seconds
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_connect_timeout=timeout, socket_timeout=timeout
            )
            try:
                client.ping()
            finally:
                client.close()
        elif url.startswith("sqla+"):
            engine = create_engine(url.removeprefix("sqla+"))
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            finally:
                engine.dispose()
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=timeout) as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        return f"broker: {type(exc).__name__}: {exc}".splitlines()[0]
    return None
