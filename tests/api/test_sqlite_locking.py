"""The embedded default's SQLite locking: readers and key checks never wait for a writer, a write
that cannot get the lock in time is a 503 that stores nothing, and timestamps read back in UTC."""

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from app.core.config import get_settings
from app.core.db import get_engine
from app.identity.security import create_api_key
from app.models import ApiKey
from tests.conftest import migrate, reset_caches

COMPARISON = {
    "user_id": "alice",
    "video_a": "yt:one",
    "video_b": "yt:two",
    "criteria_scores": [{"criterion": "largely_recommended", "score": 3}],
}


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Path:
    # A short wait, so that a request the lock holds back gives up quickly.
    monkeypatch.setenv("SQLITE_BUSY_TIMEOUT_SECONDS", "0.5")
    reset_caches()
    settings = get_settings()
    settings.ensure_data_dir()
    migrate(settings.resolved_database_url)
    return settings.data_dir / "licchavi.sqlite3"


@pytest.fixture
def client(database: Path) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


def new_key(*scopes: str) -> dict[str, str]:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="test", scopes=list(scopes))
        session.commit()
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def write_lock_held(database: Path) -> Iterator[None]:
    """Another process's writer: SQLite's write lock, held on a connection of its own."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def test_reads_and_key_checks_take_no_write_lock(client: TestClient, database: Path) -> None:
    headers = new_key("scores:read_local")  # never verified yet: the request looks it up
    with write_lock_held(database):
        assert client.get("/api/v1/criteria").status_code == 200
        assert client.get("/api/v1/training-runs").status_code == 200
        assert client.get("/readyz").status_code == 200
        # No run published yet: the published pointer is read, and found empty.
        assert client.get("/api/v1/scores").json()["run_id"] is None
        # The key is looked up, then the user (unknown here): both are reads.
        answer = client.get("/api/v1/users/alice/scores", headers=headers)
        assert answer.status_code == 404 and answer.json()["type"].endswith("/not-found")


def test_a_write_key_is_checked_without_the_write_lock(client: TestClient, database: Path) -> None:
    headers = new_key("comparisons:write")
    with write_lock_held(database):
        # The key is verified while another writer holds the lock; only the write then waits.
        answer = client.post("/api/v1/comparisons", json=COMPARISON, headers=headers)
        assert answer.status_code == 503
    # The key was verified (and remembered): the retry takes the fast path and stores the row.
    assert client.post("/api/v1/comparisons", json=COMPARISON, headers=headers).status_code == 201


@pytest.mark.parametrize(
    ("path", "body", "key_verified"),
    [
        ("/api/v1/comparisons", COMPARISON, False),  # through the route
        ("/api/v1/comparisons", COMPARISON, True),  # through the single-write fast path
        ("/api/v1/comparisons/bulk", [COMPARISON], False),
        ("/api/v1/training-runs", {}, False),
    ],
)
def test_a_write_that_cannot_get_the_lock_is_a_503_and_stores_nothing(
    client: TestClient, database: Path, path: str, body: object, key_verified: bool
) -> None:
    headers = new_key("admin")
    if key_verified:
        assert client.get("/api/v1/users/alice/scores", headers=headers).status_code == 404
    with write_lock_held(database):
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["type"].endswith("/service-unavailable")
    assert client.get("/api/v1/comparisons").json()["total"] == 0
    assert client.get("/api/v1/training-runs").json()["total"] == 0
    # Sent again once the lock is free, the same request succeeds.
    assert client.post(path, json=body, headers=headers).status_code in (200, 201, 202)


def test_every_way_a_write_transaction_ends_hands_the_write_lock_on(database: Path) -> None:
    # Writers of one process queue for SQLite's lock behind one another; a transaction that
    # ended without handing its turn on would stall every later writer of the process.
    engine = get_engine()
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE turns (writer INTEGER)"))

    def write(number: int) -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO turns VALUES (:n)"), {"n": number})

    with pytest.raises(RuntimeError), engine.begin() as connection:  # rolled back
        connection.execute(text("INSERT INTO turns VALUES (0)"))
        raise RuntimeError
    write(1)
    session = Session(engine)  # closed mid-transaction: the pool's reset rolls back
    session.exec(text("INSERT INTO turns VALUES (0)"))  # type: ignore[call-overload]
    session.close()
    write(2)
    connection = engine.connect()  # invalidated mid-transaction: its connection is closed
    connection.execute(text("INSERT INTO turns VALUES (0)"))
    connection.invalidate()
    connection.close()
    write(3)
    # A second write transaction in a thread that holds one waits its bounded turn and fails.
    with engine.begin() as holder:
        holder.execute(text("INSERT INTO turns VALUES (4)"))
        with pytest.raises(OperationalError, match="database is locked"):
            write(0)
    # Another thread writes once the holder is done.
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            write(5)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors == []
    with engine.connect() as reader:
        rows = reader.execute(text("SELECT writer FROM turns ORDER BY writer")).scalars().all()
    assert rows == [1, 2, 3, 4, 5]


def test_timestamps_read_back_from_sqlite_are_utc(client: TestClient) -> None:
    headers = new_key("admin")
    before = datetime.now(UTC) - timedelta(seconds=5)
    assert client.post("/api/v1/comparisons", json=COMPARISON, headers=headers).status_code == 201
    run = client.post("/api/v1/training-runs", json={}, headers=headers).json()
    served = [
        *(
            item[name]
            for item in client.get("/api/v1/comparisons").json()["items"]
            for name in ("created_at", "updated_at")
        ),
        run["created_at"],
        client.get(f"/api/v1/training-runs/{run['id']}").json()["created_at"],
        *(item["created_at"] for item in client.get("/api/v1/videos").json()["items"]),
        *(
            item["created_at"]
            for item in client.get("/api/v1/users/alice/comparisons").json()["items"]
        ),
    ]
    for text_value in served:
        moment = datetime.fromisoformat(text_value)
        assert moment.utcoffset() == timedelta(0), text_value
        assert before - timedelta(days=1) < moment < datetime.now(UTC) + timedelta(seconds=5)
    with Session(get_engine()) as session:
        stored = session.exec(select(ApiKey.created_at)).first()
    assert stored is not None and stored.tzinfo is not None
    assert abs(stored - datetime.now(UTC)) < timedelta(minutes=5)
