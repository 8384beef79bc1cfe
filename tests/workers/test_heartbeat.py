"""The heartbeat writer on the embedded default: it says what the process works on, forgets long
silent workers, deletes its row when stopped, and never waits for SQLite's write lock."""

import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.core.config import get_settings
from workers.heartbeat import HeartbeatWriter, working_on


def rows(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as connection:
        found = connection.execute(text("SELECT * FROM worker_heartbeats")).mappings()
        return {row["worker"]: dict(row) for row in found}


@pytest.fixture
def writer(sqlite_engine: Engine) -> HeartbeatWriter:
    return HeartbeatWriter("celery@test", "cpu,gpu")


def test_a_beat_says_who_and_what_and_forgets_long_silent_workers(
    sqlite_engine: Engine, writer: HeartbeatWriter
) -> None:
    stale = datetime.now(UTC) - timedelta(seconds=get_settings().worker_heartbeat_retention_seconds)
    with sqlite_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO worker_heartbeats (worker, pid, seen_at) VALUES ('gone:1', 1, :at)"),
            {"at": stale - timedelta(seconds=1)},
        )
    assert writer.beat()
    (row,) = rows(sqlite_engine).values()
    assert row["worker"] == writer.worker and row["worker"].startswith("celery@test:")
    assert (row["queues"], row["current_run_id"], row["current_evaluation_id"]) == (
        "cpu,gpu",
        None,
        None,
    )
    first_seen = row["seen_at"]
    with working_on(run_id=42):
        assert writer.beat()
        assert rows(sqlite_engine)[writer.worker]["current_run_id"] == 42
    with working_on(evaluation_id=9):
        assert writer.beat()
        now = rows(sqlite_engine)[writer.worker]
        assert (now["current_run_id"], now["current_evaluation_id"]) == (None, 9)
    assert str(now["seen_at"]) > str(first_seen) and now["started_at"] == row["started_at"]
    writer.stop()
    assert rows(sqlite_engine) == {}


def test_a_beat_skips_rather_than_waits_for_the_write_lock(
    sqlite_engine: Engine, writer: HeartbeatWriter
) -> None:
    # Another process's writer holds SQLite's write lock (the busy timeout is 10 s).
    other = sqlite3.connect(get_settings().resolved_database_url.removeprefix("sqlite:///"))
    other.isolation_level = None
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert not writer.beat()
        assert time.monotonic() - started < 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    # A writer of this process holds it (the in-process write gate).
    with sqlite_engine.begin() as connection:
        connection.execute(text("UPDATE criteria SET name = name"))
        started = time.monotonic()
        assert not writer.beat()
        assert time.monotonic() - started < 1.0
    assert writer.beat()
    assert list(rows(sqlite_engine)) == [writer.worker]
    writer.engine.dispose()
