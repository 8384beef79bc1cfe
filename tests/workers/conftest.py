"""Fixtures of the worker tests: a fresh PostgreSQL database with Redis as broker."""

from collections.abc import Iterator

import pytest

from tests.conftest import create_database, drop_database, reset_caches
from tests.workers.training_support import FAST_RECOVERY


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
