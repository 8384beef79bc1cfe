"""The one-statement upsert on PostgreSQL: unknown criteria write nothing; counts and statuses."""

from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.comparisons.upsert import UnknownCriteria, oriented, upsert_comparisons
from app.core.db import CUSTOM_PLANS_ONLY
from tests.conftest import create_database, drop_database


def count(session: Session, table: str) -> int:
    return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_an_unknown_criterion_writes_nothing(pg_session: Session) -> None:
    before = {table: count(pg_session, table) for table in ("users", "videos", "comparisons")}
    rows = [
        oriented("newcomer", "yt:x", "yt:y", "largely_recommended", 3, 10),
        oriented("newcomer", "yt:x", "yt:y", "no_such_criterion", 3, 10),
    ]
    with pytest.raises(UnknownCriteria) as raised:
        upsert_comparisons(pg_session, rows=rows, statuses=True)
    assert raised.value.names == ["no_such_criterion"]
    assert {table: count(pg_session, table) for table in before} == before


def test_counts_and_statuses_agree_with_duplicates_and_flipped_pairs(pg_session: Session) -> None:
    first = [oriented(f"u{i}", "yt:b", f"yt:a{i}", "importance", i % 3, 10) for i in range(50)]
    outcome = upsert_comparisons(pg_session, rows=first, statuses=True)
    assert (outcome.inserted, outcome.updated, outcome.unchanged) == (50, 0, 0)
    assert set(outcome.statuses.values()) == {"created"}
    again = [
        oriented("u0", "yt:a0", "yt:b", "importance", 0, 10),  # same pair reversed, same score
        oriented("u1", "yt:a1", "yt:b", "importance", 5, 10),  # changed
        oriented("u1", "yt:a1", "yt:b", "importance", 4, 10),  # a later duplicate wins
        oriented("u99", "yt:a1", "yt:b", "importance", 4, 10),  # new
    ]
    outcome = upsert_comparisons(pg_session, rows=again, statuses=True)
    assert (outcome.inserted, outcome.updated, outcome.unchanged) == (1, 1, 1)
    assert outcome.statuses == {
        ("u0", "yt:a0", "yt:b", "importance"): "unchanged",
        ("u1", "yt:a1", "yt:b", "importance"): "updated",
        ("u99", "yt:a1", "yt:b", "importance"): "created",
    }
    counted = upsert_comparisons(pg_session, rows=again)
    assert (counted.inserted, counted.updated, counted.unchanged, counted.statuses) == (0, 0, 3, {})
    score = pg_session.execute(
        text(
            "SELECT c.score FROM comparisons c JOIN users u ON u.id = c.user_id"
            " WHERE u.external_id = 'u1'"
        )
    ).scalar_one()
    assert score == 4.0


def test_names_with_quotes_backslashes_and_commas_round_trip(pg_session: Session) -> None:
    # The API's validation never lets such names through, but the statement must not depend on it.
    rows = [
        oriented('say "hi"', "yt:a,b", "yt:c\\d", "importance", 1, 10),
        oriented("NULL", "yt:{x}", "yt: y", "importance", 2, 10),
    ]
    outcome = upsert_comparisons(pg_session, rows=rows, statuses=True)
    assert set(outcome.statuses.values()) == {"created"}
    stored = pg_session.execute(
        text(
            "SELECT u.external_id, va.external_id, vb.external_id FROM comparisons c"
            " JOIN users u ON u.id = c.user_id JOIN videos va ON va.id = c.video_a_id"
            " JOIN videos vb ON vb.id = c.video_b_id"
        )
    ).all()
    assert {tuple(row) for row in stored} == {row.key[:3] for row in rows}


def test_names_map_to_their_ids_whatever_the_database_collation() -> None:
    # postgres:16 images default to en_US.utf8, which sorts "a_b" < "ab" < "b" < "B" where
    # Python (and COLLATE "C") sorts "B" < "a_b" < "ab" < "b"; ids must not follow the former.
    url, admin = create_database(
        "licchavi_collation", "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' TEMPLATE template0"
    )
    engine = create_engine(url)
    names = ["b", "B", "a_b", "ab", "A"]
    try:
        with Session(engine) as session:
            rows = [
                oriented(user, f"yt:{video}", f"yt:{other}", "largely_recommended", score, 10)
                for score, (user, video, other) in enumerate(
                    zip(names, names, names[1:] + names[:1], strict=True)
                )
            ]
            upsert_comparisons(session, rows=rows, statuses=True)
            session.commit()
            stored = session.execute(
                text(
                    "SELECT u.external_id, a.external_id, b.external_id, c.score"
                    " FROM comparisons c JOIN users u ON u.id = c.user_id"
                    " JOIN videos a ON a.id = c.video_a_id JOIN videos b ON b.id = c.video_b_id"
                )
            ).all()
        assert sorted(tuple(row) for row in stored) == sorted(
            (row.user, row.video_a, row.video_b, row.score) for row in rows
        )
    finally:
        engine.dispose()
        drop_database(url, admin)


def test_pooled_postgres_connections_never_plan_generically(postgres_engine: Engine) -> None:
    # Single writes prepare their statement (app/comparisons/upsert.py); on these connections it is
    # still planned on each execution, with the statistics of the moment.
    with postgres_engine.connect() as connection:
        mode = connection.execute(text("SHOW plan_cache_mode")).scalar_one()
        assert connection.info[CUSTOM_PLANS_ONLY] is True
    assert mode == "force_custom_plan"


def test_the_single_write_statement_is_prepared_and_keeps_its_answers(
    postgres_engine: Engine,
) -> None:
    # Past psycopg's and PostgreSQL's thresholds (5 runs each), the same outcomes as the first run.
    with postgres_engine.connect() as connection, connection.begin() as transaction:
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        for i in range(8):
            rows = [oriented("prep", "yt:p", f"yt:q{i}", "importance", 1, 10)]
            first = upsert_comparisons(session, rows=rows, statuses=True)
            again = upsert_comparisons(session, rows=rows, statuses=True)
            assert (first.inserted, again.unchanged) == (1, 1)
        driver: Any = connection.connection.driver_connection
        prepared = driver.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%%WITH crit AS%%'"
        ).fetchone()
        assert prepared is not None and prepared[0] == 1
        transaction.rollback()
