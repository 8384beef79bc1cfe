"""Fixtures of the worker tests: a fresh PostgreSQL database with Redis as broker."""

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI, create_database, drop_database, reset_caches
from tests.helpers import free_port
from tests.workers.training_support import FAST_RECOVERY, RedisServer


@pytest.fixture
def postgres_and_redis(monkeypatch: pytest.MonkeyPatch, redis_broker_url: str) -> Iterator[str]:
    url, admin = create_database("licchavi_training")
    for name, value in FAST_RECOVERY.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CELERY_BROKER_URL", redis_broker_url)
    reset_caches()
    yield url
    from app.core.db import dispose_engine

    dispose_engine()
    drop_database(url, admin)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start (never the shared one)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_and_private_redis(
    monkeypatch: pytest.MonkeyPatch, private_redis: RedisServer
) -> Iterator[RedisServer]:
    """A fresh PostgreSQL database with a private Redis as broker, fast recovery settings."""
    url, admin = create_database("licchavi_faults")
    for name, value in FAST_RECOVERY.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CELERY_BROKER_URL", private_redis.url)
    reset_caches()
    yield private_redis
    from app.core.db import dispose_engine

    dispose_engine()
    drop_database(url, admin)
