"""Concurrent writers of the same comparison leave exactly one row, on both databases."""

import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from app.core.db import get_engine
from app.core.security import create_api_key
from app.main import create_app


def test_eight_threads_posting_the_same_comparison_leave_one_row(committed_database: str) -> None:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["comparisons:write"])
        session.commit()
    app = create_app()
    barrier = threading.Barrier(8)

    def post(i: int) -> int:
        # Alternate the order of the pair: both orders are the same comparison.
        a, b, score = ("yt:one", "yt:two", 5) if i % 2 else ("yt:two", "yt:one", -5)
        body = {
            "user_id": "racer",
            "video_a": a,
            "video_b": b,
            "criteria_scores": [{"criterion": "largely_recommended", "score": score}],
        }
        with TestClient(app) as client:
            barrier.wait(timeout=30)
            return client.post(
                "/api/v1/comparisons", json=body, headers={"Authorization": f"Bearer {key}"}
            ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(8)))
    assert sorted(statuses).count(201) >= 1 and set(statuses) <= {200, 201}
    with get_engine().connect() as connection:
        rows = connection.execute(text("SELECT score FROM comparisons")).all()
        users = connection.execute(text("SELECT count(*) FROM users")).scalar_one()
        videos = connection.execute(text("SELECT count(*) FROM videos")).scalar_one()
    assert [r.score for r in rows] == [5.0]  # stored as yt:one < yt:two
    assert (users, videos) == (1, 2)
