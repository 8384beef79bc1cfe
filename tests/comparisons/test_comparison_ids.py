"""Comparison ids past 2³¹ (migration 0011): every attempted upsert draws a sequence value, so a
long-lived deployment gets there; rows stored before the migration keep their ids, and writes,
reads and deletes go on beyond it, on PostgreSQL and SQLite."""

import sqlalchemy as sa
from sqlmodel import Session

from app.comparisons import service
from app.comparisons.upsert import oriented, upsert_comparisons
from app.core.db import make_engine
from tests.cli.test_commands import empty_postgres  # noqa: F401  (a fixture)
from tests.identity.test_api_key_migration import unmigrated_url, upgrade  # noqa: F401

PAST_INT32 = 2**31 + 7


def write(engine: sa.Engine, user: str, a: str, b: str, score: float) -> None:
    with Session(engine) as session:
        row = oriented(user, a, b, "largely_recommended", score, 10, None)
        upsert_comparisons(session, rows=[row])
        session.commit()


def test_ids_go_past_two_to_the_31(unmigrated_url: str) -> None:  # noqa: F811  (the fixture)
    upgrade(unmigrated_url, "0010")
    engine = make_engine(unmigrated_url)
    try:
        write(engine, "alice", "yt:a", "yt:b", 3)
        upgrade(unmigrated_url, "head")
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text(f"SELECT setval('comparisons_id_seq', {PAST_INT32})"))
            else:  # the rowid: the next one follows the largest
                connection.execute(sa.text("UPDATE comparisons SET id = :id"), {"id": PAST_INT32})
        write(engine, "bob", "yt:a", "yt:c", -4)
        write(engine, "alice", "yt:a", "yt:b", 5)  # an update of the row stored before
        with engine.connect() as connection:
            ids = dict(
                connection.execute(
                    sa.text(
                        "SELECT u.external_id, max(c.id) FROM comparisons c"
                        " JOIN users u ON u.id = c.user_id GROUP BY u.external_id"
                    )
                ).all()
            )
        assert ids["alice"] == (1 if engine.dialect.name == "postgresql" else PAST_INT32)
        assert ids["bob"] > PAST_INT32
        with Session(engine) as session:
            bobs = service.get_pair(session, user_id="bob", video_a="yt:a", video_b="yt:c")
            assert [s.score for s in bobs.criteria_scores] == [-4]
            assert (
                service.delete_pair(
                    session, user_id="bob", video_a="yt:c", video_b="yt:a", criterion=None
                )
                == 1
            )
            session.commit()
    finally:
        engine.dispose()
