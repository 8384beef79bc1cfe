"""The statements one single write costs on the embedded default (SQLite): every one runs with the
write lock held, so each one removed shortens the queue of writers behind it."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from tests.api.test_sqlite_locking import new_key


@pytest.fixture
def traced(sqlite_engine: Engine) -> Iterator[tuple[TestClient, list[str]]]:
    """A client of the app and the SQL its connections run, as SQLite sees it (BEGIN, PRAGMA and
    COMMIT included, which SQLAlchemy's own events do not all see)."""
    from app.main import create_app

    statements: list[str] = []
    engine = sqlite_engine

    @event.listens_for(engine, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    engine.dispose()  # pooled connections were made before the listener
    with TestClient(create_app()) as client:
        yield client, statements


def comparison(user: str, a: str = "yt:one", b: str = "yt:two", score: int = 3) -> dict[str, Any]:
    return {
        "user_id": user,
        "video_a": a,
        "video_b": b,
        "criteria_scores": [{"criterion": "largely_recommended", "score": score}],
    }


def kinds(statements: list[str]) -> list[str]:
    """Each statement as its first words: what it does and to which table."""
    named = []
    for statement in statements:
        words = statement.split()
        if words[0] == "INSERT":
            named.append(f"INSERT {words[2]}")
        elif words[0] == "SELECT" and "FROM training_runs" in statement:
            named.append("SELECT training_runs")
        elif words[0] == "SELECT" and "JOIN comparisons" in statement:
            named.append("SELECT comparisons")
        elif words[0] == "SELECT":
            named.append("SELECT names")
        else:
            named.append(" ".join(words[:2]))
    return named


def test_a_single_write_runs_only_the_statements_it_needs(
    traced: tuple[TestClient, list[str]],
) -> None:
    client, statements = traced
    headers = new_key("comparisons:write")
    # The first write queues the criterion's auto run; the others find it queued.
    first = client.post("/api/v1/comparisons", json=comparison("first"), headers=headers)
    assert first.status_code == 201
    new_user = ["BEGIN IMMEDIATE", "SELECT names", "INSERT users", "INSERT comparisons"]
    expected = {
        # A new user: inserted with its id returned (no look-up after), and no look-up of the
        # comparisons it replaces (a new user has none).
        "new user": (comparison("new"), 201, new_user),
        "another new user": (comparison("newer"), 201, new_user),
        "known user, new video": (
            comparison("new", "yt:one", "yt:three"),
            201,
            [
                "BEGIN IMMEDIATE",
                "SELECT names",
                "INSERT videos",
                "SELECT comparisons",
                "INSERT comparisons",
            ],
        ),
        "re-post": (
            comparison("new", "yt:one", "yt:three", score=4),
            200,
            ["BEGIN IMMEDIATE", "SELECT names", "SELECT comparisons", "INSERT comparisons"],
        ),
    }
    timeouts = 0
    for name, (body, status, writes) in expected.items():
        statements.clear()
        answer = client.post("/api/v1/comparisons", json=body, headers=headers)
        assert answer.status_code == status, (name, answer.text)
        done = [kind for kind in kinds(statements) if kind != "PRAGMA busy_timeout=0"]
        assert done == [*writes, "SELECT training_runs", "COMMIT"], name
        timeouts += len(statements) - len(done)
    # The busy timeout is set when a connection turns from reading to writing, not twice a write.
    assert timeouts < len(expected)
