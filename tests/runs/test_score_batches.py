"""A run's scores are staged criterion by criterion, and superseded scores deleted, in
transactions of a bounded number of rows, each staging one fenced by the criterion's lease; the
transaction that publishes a run writes none. On SQLite each write transaction holds the
database's only write lock, so these bounds are what an API write can wait for. Measured
structurally (score rows added or removed by each committed transaction), on both databases."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from app.comparisons.transfer import import_comparisons
from app.core.db import get_engine
from app.main import create_app
from app.runs import fanout, leases, publication
from app.runs.recovery import prune_superseded_scores
from tests.comparisons.test_comparisons import assert_problem
from tests.conftest import ApiClient, reset_caches
from tests.runs.test_fanout import listed_run, run_status
from tests.scores.test_scores import DEMO, SCORES, run_now
from workers.tasks.training import train_run

BATCH = 25
SCORE_ROWS = "SELECT (SELECT count(*) FROM global_scores) + (SELECT count(*) FROM local_scores)"


class Transactions:
    """For every committed transaction of an engine: the score rows it added (negative: removed),
    and whether it moved `run_id` to succeeded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.run_id: int | None = None
        self.committed: list[tuple[int, bool]] = []

    def _read(self, connection: Any) -> tuple[int, str | None]:
        # On the DBAPI connection itself: inside the transaction, which sees its own writes.
        raw = connection.connection.dbapi_connection
        rows = int(raw.execute(SCORE_ROWS).fetchone()[0])
        state = raw.execute(
            f"SELECT status FROM training_runs WHERE id = {int(self.run_id or 0)}"
        ).fetchone()
        return rows, None if state is None else str(state[0])

    def begin(self, connection: Any) -> None:
        connection.info["score_rows_at_begin"] = self._read(connection)

    def commit(self, connection: Any) -> None:
        before = connection.info.pop("score_rows_at_begin", None)
        if before is None:
            return
        after = self._read(connection)
        succeeded = after[1] == "succeeded" and before[1] != "succeeded"
        self.committed.append((after[0] - before[0], succeeded))

    def __enter__(self) -> "Transactions":
        event.listen(self.engine, "begin", self.begin)
        event.listen(self.engine, "commit", self.commit)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "begin", self.begin)
        event.remove(self.engine, "commit", self.commit)


@pytest.fixture
def client(committed_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiClient]:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("SCORES_POINTER_TTL_SECONDS", "0")
    monkeypatch.setenv("SQLITE_SCORE_BATCH_ROWS", str(BATCH))
    reset_caches()
    import_comparisons(get_engine(), DEMO)
    from sqlmodel import Session

    yield ApiClient(create_app(), lambda: Session(get_engine()))


def batch_rows() -> int:
    return publication.score_batch_rows(get_engine())


def test_a_run_writes_its_scores_in_bounded_transactions_then_publishes_them_in_one_without_any(
    client: ApiClient,
) -> None:
    headers = client.key("runs:write")
    run_id = int(client.post("/api/v1/training-runs", json={}, headers=headers).json()["id"])
    with Transactions(get_engine()) as transactions:
        transactions.run_id = run_id
        assert train_run(run_id) == "succeeded"
    written = sum(rows for rows, _ in transactions.committed)
    total = client.get(SCORES, params={"limit": 1}).json()["total"]
    assert total == 100 and written > 20 * BATCH  # 100 global scores and the local ones
    publishing = [rows for rows, succeeded in transactions.committed if succeeded]
    assert publishing == [0]  # one transaction moved the run to succeeded, and wrote no score
    assert max(abs(rows) for rows, _ in transactions.committed) <= batch_rows()
    # On SQLite the batch is the setting: many transactions, none over it.
    if get_engine().dialect.name == "sqlite":
        assert sum(1 for rows, _ in transactions.committed if rows) >= written // BATCH


def test_superseded_scores_are_deleted_in_bounded_transactions_and_gone_before_they_start(
    client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = client.key("runs:write")
    first = run_now(client, headers)
    assert client.get(SCORES, params={"run_id": first}).json()["total"] == 100
    second = run_now(client, headers)
    monkeypatch.setenv("SCORE_RUNS_KEPT", "1")
    reset_caches()
    # Superseded: answered as pruned already, so no reader ever sees it half deleted.
    assert_problem(client.get(SCORES, params={"run_id": first}), 410)
    with Transactions(get_engine()) as transactions:
        assert prune_superseded_scores(get_engine(), runs_kept=1) == [first]
    removed = -sum(rows for rows, _ in transactions.committed)
    assert removed > 20 * BATCH
    assert max(abs(rows) for rows, _ in transactions.committed) <= batch_rows()
    with get_engine().connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM local_scores WHERE run_id = :run"), {"run": first}
        ).scalar_one()
    assert left == 0
    assert client.get(SCORES).json()["run_id"] == second


def main_criterion_id() -> int:
    with get_engine().connect() as connection:
        return int(
            connection.execute(
                text("SELECT id FROM criteria WHERE name = 'largely_recommended'")
            ).scalar_one()
        )


def output(criterion_id: int, n_videos: int, n_local: int, shift: float) -> Any:
    videos = np.arange(1, n_videos + 1, dtype=np.int64)
    return publication.CriterionOutput(
        criterion_id=criterion_id,
        criterion="largely_recommended",
        epoch=1,
        state=b"state",
        video_ids=videos,
        global_scores=videos * 0.1 + shift,
        global_uncertainty=np.ones(n_videos),
        n_comparisons=np.ones(n_videos, dtype=np.int64),
        n_contributors=np.ones(n_videos, dtype=np.int64),
        local_user_ids=np.arange(1, n_local + 1, dtype=np.int64),
        local_video_ids=np.ones(n_local, dtype=np.int64),
        local_scores=np.zeros(n_local),
        local_uncertainty=np.ones(n_local),
    )


def staged_rows(run_id: int) -> tuple[int, int, float | None]:
    with get_engine().connect() as connection:
        counts = connection.execute(
            text(
                "SELECT (SELECT count(*) FROM global_scores WHERE run_id = :run),"
                " (SELECT count(*) FROM local_scores WHERE run_id = :run),"
                " (SELECT min(score) FROM global_scores WHERE run_id = :run)"
            ),
            {"run": run_id},
        ).one()
    return int(counts[0]), int(counts[1]), counts[2]


def test_a_later_attempt_replaces_what_an_earlier_one_staged_and_the_earlier_one_writes_nothing(
    client: ApiClient,
) -> None:
    engine = get_engine()
    criterion_id = main_criterion_id()
    run_id = listed_run(names=["largely_recommended"]).run_id
    first = fanout.claim_next(engine, owner="first", lease_seconds=3600, run_id=run_id)
    assert first is not None
    with Transactions(engine) as transactions:
        fanout.stage(engine, first, output(criterion_id, 70, 90, 0.0), lease_seconds=3600)
    assert max(abs(rows) for rows, _ in transactions.committed) <= batch_rows()
    with engine.begin() as connection:  # the first worker is gone (kill -9): its lease ends
        assert fanout.hand_off(connection, first)
    second = fanout.claim_next(engine, owner="second", lease_seconds=3600, run_id=run_id)
    assert second is not None and (second.item_id, second.attempt) == (first.item_id, 2)
    with Transactions(engine) as transactions:
        fanout.stage(engine, second, output(criterion_id, 60, 50, 1.0), lease_seconds=3600)
    # The earlier attempt's rows went in bounded deletions before the new ones went in.
    assert min(rows for rows, _ in transactions.committed) < 0
    assert max(abs(rows) for rows, _ in transactions.committed) <= batch_rows()
    # The first worker wakes up: it can neither stage nor finish.
    with pytest.raises(leases.LeaseLost):
        fanout.stage(engine, first, output(criterion_id, 70, 90, 0.0), lease_seconds=60)
    with pytest.raises(leases.LeaseLost), engine.begin() as connection:
        fanout.finish(connection, first)
    with Transactions(engine) as transactions:
        transactions.run_id = run_id
        with engine.begin() as connection:
            assert fanout.finish(connection, second) == ["largely_recommended"]
    assert transactions.committed == [(0, True)]  # published, without writing a score
    assert run_status(run_id)[0] == "succeeded"
    rows = staged_rows(run_id)
    assert rows[:2] == (60, 50) and rows[2] == pytest.approx(1.1)


def test_scores_a_run_stored_before_it_failed_are_pruned_and_never_served(
    client: ApiClient,
) -> None:
    engine = get_engine()
    criterion_id = main_criterion_id()
    run_id = listed_run(names=["largely_recommended"]).run_id
    claim = fanout.claim_next(engine, owner="w", lease_seconds=3600, run_id=run_id)
    assert claim is not None
    fanout.stage(engine, claim, output(criterion_id, 30, 30, 0.0), lease_seconds=3600)
    assert_problem(client.get(SCORES, params={"run_id": run_id}), 409)  # running: not served
    png = client.get(f"/api/v1/training-runs/{run_id}/plots/scores.png")
    assert png.status_code == 404
    with engine.begin() as connection:
        assert fanout.stop_run(connection, claim, status="failed", error="boom")
    # Its worker died before deleting them: the pruning does, in bounded transactions.
    with Transactions(engine) as transactions:
        assert prune_superseded_scores(engine, runs_kept=20) == [run_id]
    assert max(abs(rows) for rows, _ in transactions.committed) <= batch_rows()
    assert staged_rows(run_id)[:2] == (0, 0)
