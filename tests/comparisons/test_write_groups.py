"""Group commit on SQLite: queued single writes share a transaction, each answered as alone."""

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from app.comparisons.schemas import ComparisonCreate
from app.comparisons.write_groups import WriteGroups, write_groups
from app.core.config import get_settings
from app.core.db import get_engine
from app.identity.security import authenticate
from tests.api.test_sqlite_locking import new_key, write_lock_held
from tests.conftest import migrate, reset_caches

URL = "/api/v1/comparisons"


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Path:
    # Long enough that a write held back by the lock below never gives up during a test.
    monkeypatch.setenv("SQLITE_BUSY_TIMEOUT_SECONDS", "120")
    reset_caches()
    settings = get_settings()
    settings.ensure_data_dir()
    migrate(settings.resolved_database_url)
    return settings.data_dir / "licchavi.sqlite3"


@pytest.fixture
def traced(database: Path) -> Iterator[tuple[TestClient, list[str]]]:
    """A client of the app, and every statement its connections run (BEGIN and COMMIT too)."""
    from app.main import create_app

    statements: list[str] = []
    engine: Engine = get_engine()

    @event.listens_for(engine, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    engine.dispose()
    with TestClient(create_app()) as client:
        yield client, statements


def comparison(user: str, a: str = "yt:one", b: str = "yt:two", **scores: float) -> bytes:
    scored = scores or {"largely_recommended": 3}
    return json.dumps(
        {
            "user_id": user,
            "video_a": a,
            "video_b": b,
            "criteria_scores": [{"criterion": name, "score": s} for name, s in scored.items()],
        }
    ).encode()


def groups_of(client: TestClient) -> Callable[[Callable[[WriteGroups], Any]], Any]:
    """Look at the app's write groups from inside its event loop (they belong to it)."""

    def look(at: Callable[[WriteGroups], Any]) -> Any:
        async def inside() -> Any:
            return at(write_groups())

        assert client.portal is not None
        return client.portal.call(inside)

    return look


Answer = tuple[int, str | None, bytes]


def until(condition: Callable[[], Any]) -> None:
    """Wait for `condition` (a bound only against a hang: nothing is timed)."""
    for _ in range(30_000):
        if condition():
            return
        time.sleep(0.002)
    raise AssertionError("never came true")


def posted_together(
    client: TestClient,
    database: Path,
    bodies: list[bytes],
    headers: dict[str, str],
    *,
    hold: bool = False,
) -> list[Answer]:
    """Post `bodies` while another process holds the write lock: the first leads a group that
    waits for the lock, the others queue behind it in this order, and all go once it is freed
    (with `hold`, only once every write has given up waiting for it)."""
    look = groups_of(client)
    answers: list[Answer | None] = [None] * len(bodies)

    def post(i: int) -> None:
        response = client.post(URL, content=bodies[i], headers=headers)
        answers[i] = (response.status_code, response.headers.get("content-type"), response.content)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    with write_lock_held(database):
        threads[0].start()
        until(lambda: look(lambda groups: groups.writing))
        for queued, thread in enumerate(threads[1:], 1):
            thread.start()

            def behind(queued: int = queued) -> bool:
                return bool(look(lambda groups: groups.waiting) == queued)

            until(behind)
        # Still held: nothing has been answered yet.
        assert answers == [None] * len(bodies)
        if hold:
            for thread in threads:
                thread.join()
    for thread in threads:
        thread.join()
    assert look(lambda groups: (groups.writing, groups.waiting)) == (False, 0)
    return [answer for answer in answers if answer is not None]


def posted_one_by_one(
    client: TestClient, bodies: list[bytes], headers: dict[str, str]
) -> list[Answer]:
    answers = []
    for body in bodies:
        response = client.post(URL, content=body, headers=headers)
        answers.append(
            (response.status_code, response.headers.get("content-type"), response.content)
        )
    return answers


def stored_rows(database: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT u.external_id, va.external_id, vb.external_id, c.name, x.score"
            " FROM comparisons x JOIN users u ON u.id = x.user_id"
            " JOIN videos va ON va.id = x.video_a_id JOIN videos vb ON vb.id = x.video_b_id"
            " JOIN criteria c ON c.id = x.criterion_id ORDER BY 1, 2, 3, 4"
        ).fetchall()


def headers_for(client: TestClient) -> dict[str, str]:
    headers = new_key("comparisons:write") | {"content-type": "application/json"}
    authenticate_and_remember(headers)
    return headers


def authenticate_and_remember(headers: dict[str, str]) -> None:
    """Verify the key once, so that every request takes the fast path from the first."""
    from sqlmodel import Session

    with Session(get_engine()) as session:
        assert authenticate(session, headers["Authorization"])


def test_writes_queued_meanwhile_share_one_transaction(
    traced: tuple[TestClient, list[str]], database: Path
) -> None:
    client, statements = traced
    headers = headers_for(client)
    bodies = [comparison(f"user{i:02d}", "yt:one", f"yt:v{i % 3}") for i in range(12)]
    statements.clear()
    answers = posted_together(client, database, bodies, headers)
    assert [status for status, *_ in answers] == [201] * 12
    # The first write's transaction waited for the lock alone; the 11 queued meanwhile shared
    # the next one (one transaction each before).
    # (`BEGIN IMMEDIATE` is retried while the lock is held, so commits and upserts are counted.)
    assert statements.count("COMMIT") == 2
    assert sum(s.split()[:3] == ["INSERT", "INTO", "comparisons"] for s in statements) == 2
    # Each row stored once, with its own user.
    rows = stored_rows(database)
    assert len(rows) == 12 and {row[0] for row in rows} == {f"user{i:02d}" for i in range(12)}
    assert [json.loads(content)["user_id"] for *_, content in answers] == [
        f"user{i:02d}" for i in range(12)
    ]


@pytest.mark.parametrize("with_refused", [False, True])
def test_each_write_of_a_group_answers_as_it_does_alone(
    traced: tuple[TestClient, list[str]], database: Path, with_refused: bool
) -> None:
    client, statements = traced
    headers = headers_for(client)

    def bodies(prefix: str) -> list[bytes]:
        alice, bob, carol = (f"{prefix}{name}" for name in ("alice", "bob", "carol"))
        refused = [comparison(carol, nope=1)] if with_refused else []  # an unknown criterion
        return [
            comparison(alice),  # leads the first group alone
            comparison(bob),  # created
            comparison(bob),  # the same again: unchanged, after the previous in the same group
            *refused,
            comparison(bob, "yt:two", "yt:one", largely_recommended=5),  # updated (flipped pair)
            comparison(carol, importance=-2.5, largely_recommended=1),  # two criteria, created
            comparison(alice, "yt:one", "yt:three"),  # a known user, a new video
            comparison(bob, "yt:two", "yt:one", largely_recommended=5, importance=2),
        ]

    statements.clear()
    together = posted_together(client, database, bodies("t-"), headers)
    # One transaction for the first write, one for the others: with a refused write among them,
    # rolled back and written again one by one, the refused one alone left out.
    assert statements.count("COMMIT") == 2
    alone = posted_one_by_one(client, bodies("s-"), headers)
    # Byte for byte the same answers, once the users' prefixes are set aside.
    assert [(s, t, c.replace(b'"t-', b'"X-')) for s, t, c in together] == [
        (s, t, c.replace(b'"s-', b'"X-')) for s, t, c in alone
    ]
    statuses = [201, 201, 200, *([422] if with_refused else []), 200, 201, 201, 201]
    assert [status for status, *_ in together] == statuses
    if with_refused:
        assert json.loads(together[3][2])["errors"][0]["type"] == "unknown_criterion"
    # The same rows for both, none lost, none twice.
    rows = stored_rows(database)
    assert [row[1:] for row in rows if row[0].startswith("t-")] == [
        row[1:] for row in rows if row[0].startswith("s-")
    ]
    assert len(rows) == 2 * 6


def test_a_group_that_cannot_get_the_lock_stores_none_of_its_writes(
    monkeypatch: pytest.MonkeyPatch, database: Path
) -> None:
    from app.main import create_app

    monkeypatch.setenv("SQLITE_BUSY_TIMEOUT_SECONDS", "2")
    reset_caches()
    with TestClient(create_app()) as client:
        headers = headers_for(client)
        bodies = [comparison(f"user{i}") for i in range(5)]
        answers = posted_together(client, database, bodies, headers, hold=True)
        assert [status for status, *_ in answers] == [503] * 5
        assert stored_rows(database) == []
        # Sent again, each is stored.
        assert [status for status, *_ in posted_one_by_one(client, bodies, headers)] == [201] * 5


def test_a_write_given_up_while_queued_is_left_out_and_the_others_keep_their_turn(
    database: Path,
) -> None:
    answered: dict[str, int] = {}

    async def scenario() -> None:
        groups = WriteGroups()

        async def write(user: str) -> None:
            payload = ComparisonCreate.model_validate_json(comparison(user))
            answered[user] = (await groups.write(payload)).created

        async def until_waiting(count: int) -> None:
            while groups.waiting != count:
                await anyio.sleep(0.001)

        given_up = anyio.CancelScope()

        async def give_up(user: str) -> None:
            with given_up:
                await write(user)

        # Another process's writer holds the lock until the writes are queued.
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(write, "first")
                while not groups.writing:
                    await anyio.sleep(0.001)
                tasks.start_soon(write, "second")
                await until_waiting(1)
                tasks.start_soon(give_up, "third")
                await until_waiting(2)
                tasks.start_soon(write, "fourth")
                await until_waiting(3)
                given_up.cancel()
                await until_waiting(2)
                assert answered == {}
                lock.execute("ROLLBACK")
        finally:
            lock.close()
        assert (groups.writing, groups.waiting) == (False, 0)

    anyio.run(scenario)
    assert answered == {"first": 1, "second": 1, "fourth": 1}
    assert sorted(row[0] for row in stored_rows(database)) == ["first", "fourth", "second"]
