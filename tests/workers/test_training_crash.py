"""A worker killed with SIGKILL mid-training: a new worker takes the run over from its last
checkpoint and the run finishes exactly once."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.db import get_engine
from app.main import create_app
from ml.synthetic import SyntheticParams, generate
from tests.conftest import reset_caches
from tests.helpers import wait_for
from tests.workers.training_support import (
    admin_headers,
    import_csv,
    kill_worker,
    metrics_per_epoch,
    published_run,
    run_row,
    start_worker,
    stop_worker,
    stored_scores,
    synthetic_csv,
    wait_for_run,
)

EPOCHS = 1500
CHECKPOINT_EVERY = 100
UNEVEN_EPOCHS = 1550


def checkpoint_epoch(run_id: int) -> int:
    with get_engine().connect() as connection:
        value = connection.execute(
            text("SELECT max(epoch) FROM model_states WHERE run_id = :run AND is_checkpoint"),
            {"run": run_id},
        ).scalar()
    return int(value or 0)


def test_killed_worker_run_resumes_from_its_checkpoint_and_finishes_once(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("RUN_CHECKPOINT_EVERY_EPOCHS", str(CHECKPOINT_EVERY))
    reset_caches()
    assert (
        import_csv(synthetic_csv(tmp_path, n_users=100, n_videos=500, n_comparisons=10_000))
        == 10_000
    )
    first = start_worker()
    second = None
    try:
        with TestClient(create_app()) as client:
            created = client.post(
                "/api/v1/training-runs",
                # precision 1 never stops early, so the run lasts all its epochs
                json={"config": {"solver": "faithful", "epochs": EPOCHS, "precision": 1.0}},
                headers=admin_headers(),
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            wait_for("a checkpoint", lambda: checkpoint_epoch(run_id) >= CHECKPOINT_EVERY, 120)
            kill_worker(first)
            killed_at = run_row(run_id)
            assert killed_at["status"] == "running" and killed_at["attempt"] == 1
            assert killed_at["epoch"] < EPOCHS, "the run finished before the kill; use more epochs"
            resumed_from = checkpoint_epoch(run_id)

            second = start_worker()
            run = wait_for_run(client, run_id, 150)
            assert run["status"] == "succeeded", run["error"]
            assert run["attempt"] == 2 and run["epoch"] == EPOCHS

        per_epoch = metrics_per_epoch(run_id)
        with get_engine().connect() as connection:
            states = connection.execute(
                text("SELECT is_checkpoint, epoch FROM model_states WHERE run_id = :run"),
                {"run": run_id},
            ).all()
        # Every epoch's metrics exactly once: those up to the checkpoint from the first attempt,
        # the rest from the second, which therefore resumed rather than started over.
        assert [row[0] for row in per_epoch] == list(range(1, EPOCHS + 1))
        assert all(row[1] == 1 for row in per_epoch)
        attempts = {epoch: attempt for epoch, _count, attempt in per_epoch}
        assert all(attempts[e] == 1 for e in range(1, resumed_from + 1))
        assert all(attempts[e] == 2 for e in range(resumed_from + 1, EPOCHS + 1))
        assert [tuple(row) for row in states] == [(False, EPOCHS)]
        assert published_run() == run_id and len(stored_scores(run_id)) == 500
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)


def test_a_crash_in_the_second_criterion_does_not_train_the_first_again(
    postgres_and_redis: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    # The first criterion's last checkpoint falls short of its end (1500 of 1550 epochs).
    monkeypatch.setenv("RUN_CHECKPOINT_EVERY_EPOCHS", str(CHECKPOINT_EVERY))
    reset_caches()
    data = generate(
        SyntheticParams(
            n_users=60,
            n_videos=300,
            n_comparisons=4_000,
            criteria=["largely_recommended", "reliability"],
            p_extra_criteria=1.0,
            seed=3,
        )
    )
    assert import_csv(data.write(tmp_path) / "comparisons.csv") == 8_000
    first = start_worker()
    second = None
    try:
        with TestClient(create_app()) as client:
            created = client.post(
                "/api/v1/training-runs",
                json={"config": {"solver": "faithful", "epochs": UNEVEN_EPOCHS, "precision": 1.0}},
                headers=admin_headers(),
            )
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            # Criteria train in name order: kill while the second one trains.
            wait_for(
                "the second criterion to train",
                lambda: (
                    (row := run_row(run_id))["current_criterion"] == "reliability"
                    and row["epoch"] > 0
                ),
                180,
                0.1,
            )
            kill_worker(first)
            assert run_row(run_id)["status"] == "running"
            second = start_worker()
            run = wait_for_run(client, run_id, 180)
            assert run["status"] == "succeeded", run["error"]
            assert run["attempt"] == 2

        with get_engine().connect() as connection:
            first_criterion = connection.execute(
                text(
                    "SELECT count(*), min(attempt), max(attempt) FROM training_metrics"
                    " WHERE run_id = :run AND name = 'fit' AND criterion = 'largely_recommended'"
                ),
                {"run": run_id},
            ).one()
            states = connection.execute(
                text(
                    "SELECT criterion, is_checkpoint, epoch FROM model_states WHERE run_id = :run"
                    " ORDER BY criterion"
                ),
                {"run": run_id},
            ).all()
        # The first criterion's epochs were all trained (and recorded) by the first attempt only.
        assert tuple(first_criterion) == (UNEVEN_EPOCHS, 1, 1)
        assert [tuple(row) for row in states] == [
            ("largely_recommended", False, UNEVEN_EPOCHS),
            ("reliability", False, UNEVEN_EPOCHS),
        ]
        assert published_run("largely_recommended") == run_id
        assert published_run("reliability") == run_id
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
