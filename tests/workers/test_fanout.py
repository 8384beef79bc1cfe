"""Criteria fan out across real worker processes (PostgreSQL + Redis): a run's criteria train on
both workers and publish together, once; a worker killed with SIGKILL mid-criterion loses
nothing (the criterion is retaken from its checkpoint); a failing criterion fails the run with
nothing published. On the embedded SQLite default, in-process workers train them too."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from app.core.db import get_engine
from app.main import create_app
from app.runs import service as runs
from app.runs.schemas import RunCreate
from ml.synthetic import SyntheticParams, generate
from tests.conftest import reset_caches
from tests.helpers import children, wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    kill_worker,
    run_row,
    start_worker,
    stop_worker,
    wait_for_run,
)

CRITERIA = ["importance", "largely_recommended", "pedagogy", "reliability"]
EPOCHS = 1500


def import_criteria(directory: Path, criteria: list[str], n_comparisons: int = 4_000) -> None:
    data = generate(
        SyntheticParams(
            n_users=60,
            n_videos=300,
            n_comparisons=n_comparisons,
            criteria=criteria,
            p_extra_criteria=1.0,
            seed=3,
        )
    )
    assert import_csv(data.write(directory) / "comparisons.csv") == n_comparisons * len(criteria)


@contextmanager
def running_workers(directory: Path, count: int) -> Iterator[list[Any]]:
    """`count` worker processes, each logging to its own file, once all are ready; stopped
    (with any pool process left behind) at the end."""
    logs = [directory / f"worker{index}.log" for index in range(count)]
    workers = [start_worker(log=log) for log in logs]
    try:
        wait_for(
            f"{count} workers to be ready",
            lambda: all(log.exists() and " ready." in log.read_text() for log in logs),
            90,
        )
        yield workers
    finally:
        for worker in workers:
            stop_worker(worker)


def post_run(client: TestClient) -> int:
    """A cold run of every criterion, EPOCHS each (precision 1: none stops early)."""
    created = client.post(
        "/api/v1/training-runs",
        json={
            "config": {"solver": "faithful", "epochs": EPOCHS, "precision": 1.0},
            "warm_start": False,
        },
        headers=admin_headers(),
    )
    assert created.status_code == 202, created.text
    return int(created.json()["id"])


def criteria_rows(run_id: int) -> list[dict[str, Any]]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT criterion, status, attempt, trained_by, error FROM training_run_criteria"
                " WHERE run_id = :run ORDER BY position"
            ),
            {"run": run_id},
        ).mappings()
        return [dict(row) for row in rows]


def pointers() -> dict[str, int]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.name, p.run_id FROM published_runs p"
                " JOIN criteria c ON c.id = p.criterion_id"
            )
        ).all()
    return {str(name): int(run_id) for name, run_id in rows}


def pid_of(owner: str) -> int:
    return int(owner.split(":")[-2])  # host:pid:nonce (a host name may hold colons)


class PointerWatch(threading.Thread):
    """Reads every published pointer in one query over and over, keeping which criteria pointed
    at the run each time: publication is atomic when that set is only ever none or all."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.run_id: int | None = None
        self.seen: set[frozenset[str]] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            current = pointers()
            self.seen.add(frozenset(name for name, run in current.items() if run == self.run_id))
            time.sleep(0.02)

    def stop(self) -> set[frozenset[str]]:
        self.stopping.set()
        self.join(10)
        return self.seen

    def __enter__(self) -> "PointerWatch":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_two_workers_train_a_runs_criteria_and_publish_them_together_once(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    import_criteria(tmp_path, CRITERIA)
    with (
        running_workers(tmp_path, 2) as workers,
        PointerWatch() as watch,
        TestClient(create_app()) as client,
    ):
        run_id = watch.run_id = post_run(client)
        running = wait_for_run(client, run_id, 60, statuses={"running"})
        assert running["progress"] < 1
        run = wait_for_run(client, run_id, 240)
        assert run["status"] == "succeeded", run["error"]
        assert (run["progress"], run["attempt"], run["n_comparisons"]) == (1.0, 1, 16_000)
        seen = watch.stop()
        assert seen == {frozenset(), frozenset(CRITERIA)}  # never some criteria only

        progress = run["criteria_progress"]
        assert [c["criterion"] for c in progress] == CRITERIA
        assert all(
            (c["status"], c["progress"], c["attempt"], c["epoch"]) == ("trained", 1.0, 1, EPOCHS)
            for c in progress
        )
        rows = criteria_rows(run_id)
        pools = {pid for worker in workers for pid in children(worker.pid)}
        trainers = {pid_of(row["trained_by"]) for row in rows}
        print("trained by pool process:", [(r["criterion"], pid_of(r["trained_by"])) for r in rows])
        assert len(trainers) == 2 and trainers <= pools  # both workers trained some
        assert pointers() == dict.fromkeys(CRITERIA, run_id)
        with get_engine().connect() as connection:
            states = connection.execute(
                text(
                    "SELECT criterion, is_checkpoint FROM model_states WHERE run_id = :run"
                    " ORDER BY criterion"
                ),
                {"run": run_id},
            ).all()
            scores = connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT criterion_id) FROM global_scores"
                    " WHERE run_id = :run"
                ),
                {"run": run_id},
            ).one()
        assert [tuple(row) for row in states] == [(name, False) for name in CRITERIA]
        assert scores[1] == len(CRITERIA) and scores[0] > 250 * len(CRITERIA)


def test_a_worker_killed_mid_criterion_loses_nothing_and_the_run_publishes_once(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("RUN_CHECKPOINT_EVERY_EPOCHS", "100")
    reset_caches()
    import_criteria(tmp_path, CRITERIA)
    with (
        running_workers(tmp_path, 2) as workers,
        PointerWatch() as watch,
        TestClient(create_app()) as client,
    ):
        run_id = watch.run_id = post_run(client)

        def checkpointed() -> tuple[str, int] | None:
            with get_engine().connect() as connection:
                row = connection.execute(
                    text(
                        "SELECT i.criterion, i.lease_owner FROM training_run_criteria i"
                        " JOIN model_states m ON m.run_id = i.run_id"
                        " AND m.criterion = i.criterion AND m.is_checkpoint"
                        " WHERE i.run_id = :run AND i.status = 'running' LIMIT 1"
                    ),
                    {"run": run_id},
                ).first()
            return None if row is None else (str(row[0]), pid_of(row[1]))

        criterion, pool_pid = wait_for("a criterion with a checkpoint", checkpointed, 120, 0.1)
        victim = next(w for w in workers if pool_pid in children(w.pid))
        kill_worker(victim)
        assert run_row(run_id)["status"] == "running"

        run = wait_for_run(client, run_id, 240)
        assert run["status"] == "succeeded", run["error"]
        seen = watch.stop()
        assert seen == {frozenset(), frozenset(CRITERIA)}
        rows = {row["criterion"]: row for row in criteria_rows(run_id)}
        # The killed criterion was taken again by the surviving worker and trained to its end.
        assert rows[criterion]["attempt"] == 2
        assert pid_of(rows[criterion]["trained_by"]) != pool_pid
        assert all(row["status"] == "trained" for row in rows.values())
        with get_engine().connect() as connection:
            per_epoch = connection.execute(
                text(
                    "SELECT criterion, count(DISTINCT epoch), count(*) FROM training_metrics"
                    " WHERE run_id = :run AND name = 'fit' GROUP BY criterion ORDER BY criterion"
                ),
                {"run": run_id},
            ).all()
            resumed = connection.execute(
                text(
                    "SELECT min(epoch) FROM training_metrics WHERE run_id = :run"
                    " AND criterion = :criterion AND attempt = 2"
                ),
                {"run": run_id, "criterion": criterion},
            ).scalar()
        # Every epoch's metrics of every criterion exactly once; the retaken criterion resumed
        # from its checkpoint rather than from its first epoch.
        assert [tuple(row) for row in per_epoch] == [(name, EPOCHS, EPOCHS) for name in CRITERIA]
        assert resumed is not None and resumed > 100 and (resumed - 1) % 100 == 0
        assert pointers() == dict.fromkeys(CRITERIA, run_id)


def test_a_failing_criterion_fails_the_run_and_publishes_nothing(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    import_criteria(tmp_path, CRITERIA)
    with TestClient(create_app()) as client:
        run_id = post_run(client)
        # Storage corrupted under one criterion: its checkpoint no longer matches its checksum.
        with get_engine().begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO model_states (run_id, criterion, epoch, is_checkpoint, state,"
                    " sha256, created_at) VALUES (:run, 'pedagogy', 5, true, :state, :sha, now())"
                ),
                {"run": run_id, "state": b"not a state", "sha": "0" * 64},
            )
        with running_workers(tmp_path, 2):
            run = wait_for_run(client, run_id, 240)
    assert run["status"] == "failed"
    assert run["error"].startswith("pedagogy: ValueError:") and "corrupt" in run["error"]
    statuses = {row["criterion"]: row["status"] for row in criteria_rows(run_id)}
    assert statuses["pedagogy"] == "failed"
    assert set(statuses.values()) <= {"failed", "trained", "cancelled"}
    assert pointers() == {}
    with get_engine().connect() as connection:
        staged = connection.execute(
            text("SELECT count(*) FROM global_scores WHERE run_id = :run"), {"run": run_id}
        ).scalar_one()
    assert staged == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_embedded_default_trains_the_criteria_in_process(
    committed_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SQLite and its embedded broker, two worker loops in this process: the write gate
    serialises their claims, so each criterion is trained once, and the run publishes once."""
    from workers.tasks.training import take_run
    from workers.tasks.work import work

    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    criteria = CRITERIA[:3]
    import_criteria(tmp_path, criteria, n_comparisons=1_000)
    with Session(get_engine()) as session:
        run, _ = runs.create_run(
            session,
            payload=RunCreate(
                config={"solver": "faithful", "epochs": 300, "precision": 1.0}, warm_start=False
            ),
            idempotency_key=None,
        )
        session.commit()
        run_id = run.id
    assert run_id is not None
    assert take_run(get_engine(), run_id, "lister") == "listed"
    loops = [threading.Thread(target=work, args=(f"loop{index}",)) for index in range(2)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join(300)
    assert run_row(run_id)["status"] == "succeeded"
    rows = criteria_rows(run_id)
    assert [(row["criterion"], row["status"], row["attempt"]) for row in rows] == [
        (name, "trained", 1) for name in criteria
    ]
    print(f"trained by {sorted({row['trained_by'].split(':')[0] for row in rows})}")
    assert pointers() == dict.fromkeys(criteria, run_id)
