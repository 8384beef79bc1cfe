"""Read the broker itself: how many messages wait in the worker queue, on Redis or SQLite."""

import sqlite3

from app.core.config import get_settings

QUEUE = "cpu"


def waiting_messages() -> int:
    """Messages in the worker queue not yet handed to a worker (0 before the first one)."""
    settings = get_settings()
    if settings.is_embedded:
        # Delivered messages are deleted (app.core.broker.SQLChannel); older ones were kept invisible.
        with sqlite3.connect(settings.data_dir / "broker.sqlite3") as connection:
            if not connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'kombu_message'"
            ).fetchone():
                return 0
            row = connection.execute(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
                " WHERE q.name = ? AND m.visible",
                (QUEUE,),
            ).fetchone()
        return int(row[0])
    import redis

    client = redis.Redis.from_url(settings.resolved_broker_url)
    try:
        # kombu keeps one list per priority level: "cpu", then "cpu\x06\x16<n>".
        lists = [key for key in client.keys(f"{QUEUE}*") if client.type(key) == b"list"]
        return sum(int(client.llen(key)) for key in lists)
    finally:
        client.close()
