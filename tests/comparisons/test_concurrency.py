"""Concurrent writers of the same comparison leave exactly one row, on both databases."""

import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from app.core.db import get_engine
from app.identity.security import authenticate, create_api_key
from app.main import create_app
from app.runs.freshness import comparisons_changed


def race(key: str) -> list[tuple[int, str]]:
    """8 threads post the same comparison at once, alternating the order of the pair (both
    orders are the same comparison); each answer's status code and criterion status."""
    app = create_app()
    barrier = threading.Barrier(8)

    def post(i: int) -> tuple[int, str]:
        a, b, score = ("yt:one", "yt:two", 5) if i % 2 else ("yt:two", "yt:one", -5)
        body = {
            "user_id": "racer",
            "video_a": a,
            "video_b": b,
            "criteria_scores": [{"criterion": "largely_recommended", "score": score}],
        }
        with TestClient(app) as client:
            barrier.wait(timeout=30)
            response = client.post(
                "/api/v1/comparisons", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return response.status_code, response.json()["criteria_scores"][0]["status"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(post, range(8)))


def stored_counts() -> tuple[list[float], int, int, int]:
    """Scores stored, and the numbers of users, videos and training runs."""
    with get_engine().connect() as connection:
        rows = connection.execute(text("SELECT score FROM comparisons")).all()
        users = connection.execute(text("SELECT count(*) FROM users")).scalar_one()
        videos = connection.execute(text("SELECT count(*) FROM videos")).scalar_one()
        runs = connection.execute(text("SELECT count(*) FROM training_runs")).scalar_one()
    return [r.score for r in rows], users, videos, runs


def test_eight_threads_posting_the_same_comparison_leave_one_row(committed_database: str) -> None:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["comparisons:write"])
        session.commit()
    answers = race(key)
    statuses = [status for status, _ in answers]
    assert statuses.count(201) >= 1 and set(statuses) <= {200, 201}
    scores, users, videos, _runs = stored_counts()
    assert scores == [5.0]  # stored as yt:one < yt:two
    assert (users, videos) == (1, 2)


def test_eight_single_statement_writers_of_the_same_comparison_leave_one_row(
    committed_database: str,
) -> None:
    # The key verified and an auto run queued beforehand: every request takes the fast path and,
    # on PostgreSQL, writes in one autocommit statement.
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["comparisons:write"])
        comparisons_changed(session, criteria=["largely_recommended"])
        session.commit()
        authenticate(session, f"Bearer {key}")
    assert sorted(race(key)) == [(200, "unchanged")] * 7 + [(201, "created")]
    assert stored_counts() == ([5.0], 1, 2, 1)
