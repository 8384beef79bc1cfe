"""Sweep scheduler fencing, on PostgreSQL and SQLite: a scheduler whose lease was taken over has
every kind of write refused by the database, one frozen dataset per (sweep, seed) even for the
NULL seed of live comparisons, and the migration that brings both to existing databases."""

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from alembic import command
from app.core.config import get_settings
from app.core.db import make_engine
from app.sweeps import execution
from app.sweeps.scheduler import LeaseLost, SweepScheduler, acquire_lease
from app.sweeps.study import open_storage
from tests.conftest import REPO, create_database, drop_database
from tests.sweeps.test_sweep_scheduler import engine, submit
from tests.sweeps_support import grid_spec

__all__ = ["engine"]  # the fixture, shared with the scheduler tests

HOLDOUT = {
    "parameters": {"w": {"values": [0.5]}},
    "repeats": {"seeds": [0]},
    "evaluation": {"kind": "holdout", "folds": 2, "split_by": "comparison", "split_seed": 1},
    "objectives": [{"metric": "heldout_accuracy", "direction": "maximize"}],
}


def import_xs(engine: Engine) -> None:
    from app.comparisons.transfer import import_comparisons
    from tests.conftest import SHARED_DATA

    import_comparisons(engine, SHARED_DATA / "licchavi-v1-reference" / "xs" / "comparisons.csv")


def counts(engine: Engine, sweep_id: int) -> dict[str, Any]:
    """Everything a scheduler writes about a sweep, as counts and statuses."""
    with engine.connect() as connection:

        def scalar(sql: str) -> Any:
            return connection.execute(text(sql), {"s": sweep_id}).scalar()

        return {
            "status": scalar("SELECT status FROM sweeps WHERE id = :s"),
            "datasets": scalar("SELECT count(*) FROM sweep_datasets WHERE sweep_id = :s"),
            "trials": scalar("SELECT count(*) FROM sweep_trials WHERE sweep_id = :s"),
            "evaluations": scalar("SELECT count(*) FROM sweep_evaluations WHERE sweep_id = :s"),
            "queued": scalar(
                "SELECT count(*) FROM sweep_evaluations WHERE sweep_id = :s AND status = 'queued'"
            ),
            "finished_trials": scalar(
                "SELECT count(*) FROM sweep_trials WHERE sweep_id = :s AND finished_at IS NOT NULL"
            ),
            "events": scalar("SELECT count(*) FROM sweep_events WHERE sweep_id = :s"),
        }


def optuna_trials(engine: Engine, sweep_id: int) -> list[str]:
    with engine.connect() as connection:
        name = connection.execute(
            text("SELECT study_name FROM sweeps WHERE id = :s"), {"s": sweep_id}
        ).scalar_one()
    storage = open_storage(get_settings())
    study_id = storage.get_study_id_from_name(name)
    return sorted(t.state.name for t in storage.get_all_trials(study_id, deepcopy=False))


def lapse_lease(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE scheduler_leases SET expires_at = :past"),
            {"past": execution.now_utc() - timedelta(seconds=1)},
        )


def take_over(engine: Engine, stale: SweepScheduler) -> SweepScheduler:
    """`stale` held the lease; it lapses (a pause) and another scheduler takes it over."""
    lapse_lease(engine)
    fresh = SweepScheduler(engine, get_settings(), owner="fresh", wake=lambda _id: None)
    epoch = acquire_lease(engine, owner="fresh", seconds=60)
    assert epoch is not None and stale.epoch is not None and epoch == stale.epoch + 1
    fresh.epoch = epoch
    return fresh


def test_the_epoch_moves_on_with_each_new_owner_only(engine: Engine) -> None:
    assert acquire_lease(engine, owner="a", seconds=30) == 1
    assert acquire_lease(engine, owner="a", seconds=30) == 1  # a renewal keeps it
    assert acquire_lease(engine, owner="b", seconds=30) is None
    lapse_lease(engine)
    assert acquire_lease(engine, owner="b", seconds=30) == 2
    lapse_lease(engine)
    assert acquire_lease(engine, owner="a", seconds=30) == 3


def test_a_scheduler_that_lost_its_lease_has_every_write_refused(engine: Engine) -> None:
    import_xs(engine)
    holdout = submit(engine, grid_spec(**HOLDOUT))
    stale = SweepScheduler(engine, get_settings(), owner="stale", wake=lambda _id: None)
    assert stale.tick()  # holds the lease (epoch 1); prepares the holdout sweep
    grid = submit(engine, grid_spec(parameters={"w": {"values": [0.5, 2.0]}}))
    fresh = take_over(engine, stale)

    # Freezing datasets (the holdout sweep again, and the new synthetic one).
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE sweeps SET status = 'preparing' WHERE id = :s"), {"s": holdout}
        )
    before = counts(engine, holdout)
    with pytest.raises(LeaseLost):
        stale.prepare(holdout)
    with pytest.raises(LeaseLost):
        stale.prepare(grid)
    assert counts(engine, holdout) == before
    assert counts(engine, grid)["datasets"] == 0
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE sweeps SET status = 'running' WHERE id = :s"), {"s": holdout}
        )

    # Creating trials and evaluations, releasing them.
    fresh.prepare(grid)
    before = counts(engine, grid)
    assert before["trials"] == 1  # the baseline
    with pytest.raises(LeaseLost):
        stale.step(grid, paused=False)
    assert counts(engine, grid) == before

    # Telling Optuna: the fresh scheduler asks and releases; the units finish; only the stale
    # one may settle them, and is refused: no trial finished, nothing told.
    fresh.step(grid, paused=False)
    from workers.sweep_evaluation import EvaluationRunner

    runner = EvaluationRunner(engine, get_settings())
    while (claim := execution.claim_next(engine, owner="w", lease_seconds=30)) is not None:
        runner.run(claim)
    before = counts(engine, grid)
    told = optuna_trials(engine, grid)
    assert "RUNNING" in told
    with pytest.raises(LeaseLost):
        stale.step(grid, paused=False)
    assert counts(engine, grid) == before
    assert optuna_trials(engine, grid) == told

    # Status changes: failing a sweep, winding a cancelled one down, pausing, reaping, resending.
    with pytest.raises(LeaseLost):
        stale._fail(grid, "a stale scheduler's verdict")
    with pytest.raises(LeaseLost):
        stale.step(grid, paused=True)
    with pytest.raises(LeaseLost):
        stale.wind_down(grid)
    with pytest.raises(LeaseLost):
        stale.reap_expired()
    with pytest.raises(LeaseLost):
        stale.resend_unclaimed()
    assert counts(engine, grid) == before

    # A whole pass: refused at the lease, then it carries on as a follower.
    assert not stale.tick()
    assert counts(engine, grid) == before
    # The fresh scheduler finishes what it holds; Optuna told each trial once.
    while fresh.tick() and counts(engine, grid)["status"] == "running":
        while (claim := execution.claim_next(engine, owner="w", lease_seconds=30)) is not None:
            runner.run(claim)
    assert counts(engine, grid)["status"] == "completed"
    assert optuna_trials(engine, grid) == ["COMPLETE", "COMPLETE"]


def test_a_pass_that_loses_the_lease_midway_is_abandoned(engine: Engine) -> None:
    sweep_id = submit(engine, grid_spec(parameters={"w": {"values": [0.5]}}))
    stale = SweepScheduler(engine, get_settings(), owner="stale", wake=lambda _id: None)
    woken: list[int] = []
    stale.wake = woken.append
    assert stale.tick()  # prepares
    # The lease is taken over between its renewal at the start of the pass and its first write.
    fresh: list[SweepScheduler] = []
    original = stale.reap_expired

    def taken_over_first() -> list[int]:
        fresh.append(take_over(engine, stale))
        return original()

    stale.reap_expired = taken_over_first  # type: ignore[method-assign]
    before = counts(engine, sweep_id)
    assert not stale.tick()
    assert stale.epoch is None and [f.epoch for f in fresh] == [2]
    assert counts(engine, sweep_id) == before
    assert woken == []
    assert counts(engine, sweep_id)["status"] == "running"  # not failed by the refused pass


def test_the_lease_is_renewed_during_long_work_and_lapses_after_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_SCHEDULER_LEASE_SECONDS", "1.5")
    get_settings.cache_clear()
    holder = SweepScheduler(engine, get_settings(), owner="holder", wake=lambda _id: None)
    assert holder.tick()
    with holder.lease_kept():  # work outside any transaction (a big freeze) lasting 4 leases
        for _ in range(12):
            time.sleep(0.5)
            assert acquire_lease(engine, owner="follower", seconds=1.5) is None
    time.sleep(2.0)  # nothing renews it now: it lapses, and the follower takes it over
    assert acquire_lease(engine, owner="follower", seconds=1.5) == 2
    with pytest.raises(LeaseLost), holder.lease_kept():
        time.sleep(1.0)  # the renewal finds the epoch gone and stops; the next write is refused
        with holder.fenced():
            pass


def test_one_dataset_per_sweep_and_seed_even_for_live_comparisons(engine: Engine) -> None:
    import_xs(engine)
    sweep_id = submit(engine, grid_spec(**HOLDOUT))
    SweepScheduler(engine, get_settings(), owner="a", wake=lambda _id: None).tick()
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT payload, fingerprint, split_fingerprint, n_comparisons, created_at"
                " FROM sweep_datasets WHERE sweep_id = :s AND seed IS NULL"
            ),
            {"s": sweep_id},
        ).one()
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sweep_datasets (sweep_id, seed, payload, fingerprint,"
                " split_fingerprint, n_comparisons, created_at)"
                " VALUES (:s, NULL, :p, :f, :sf, :n, :c)"
            ),
            {"s": sweep_id, "p": row[0], "f": row[1], "sf": row[2], "n": row[3], "c": row[4]},
        )


# -- the migration --------------------------------------------------------------------------


def alembic_config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "alembic"))
    config.attributes["database_url"] = url
    return config


@pytest.fixture
def old_schema(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database migrated to head, then down to the sweeps revision (0003)."""
    if backend == "postgres":
        url, admin = create_database("licchavi_fence")
    else:
        url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
        command.upgrade(alembic_config(url), "head")
    command.downgrade(alembic_config(url), "0003")
    yield url
    if backend == "postgres":
        drop_database(url, admin)


def test_the_migration_merges_duplicate_datasets_and_adds_the_epoch(old_schema: str) -> None:
    engine = make_engine(old_schema)
    now = execution.now_utc()
    with engine.begin() as connection:

        def insert(sql: str, **values: Any) -> int:
            return int(connection.execute(text(sql + " RETURNING id"), values).scalar_one())

        connection.execute(
            text("INSERT INTO scheduler_leases (name, owner, expires_at) VALUES ('sweeps','w',:n)"),
            {"n": now},
        )
        sweep = insert(
            "INSERT INTO sweeps (name, status, method, spec, spec_hash, tags, criterion,"
            " objective_metric, direction, max_trials, max_parallel, units_per_trial,"
            " code_version, created_at) VALUES ('s', 'running', 'grid', '{}', 'h', '[]', 'c',"
            " 'm', 'maximize', 1, 1, 2, 'v', :n)",
            n=now,
        )
        dataset = (
            "INSERT INTO sweep_datasets (sweep_id, seed, payload, fingerprint, split_fingerprint,"
            " n_comparisons, created_at) VALUES (:s, :seed, :p, :f, 'sf', 3, :n)"
        )
        first = insert(dataset, s=sweep, seed=None, p=b"first", f="f1", n=now)
        second = insert(dataset, s=sweep, seed=None, p=b"second", f="f2", n=now)
        seeded = insert(dataset, s=sweep, seed=4, p=b"seed 4", f="f4", n=now)
        trial = insert(
            "INSERT INTO sweep_trials (sweep_id, number, status, source, params, config,"
            " config_hash, metrics, n_succeeded, tags_text, created_at) VALUES (:s, 0,"
            " 'succeeded', 'baseline', '{}', '{}', 'c', '{}', 2, ',', :n)",
            s=sweep,
            n=now,
        )
        evaluation = (
            "INSERT INTO sweep_evaluations (sweep_id, trial_id, unit_index, seed, fold,"
            " dataset_id, status, attempt, cancel_requested, progress, data_fingerprint,"
            " created_at) VALUES (:s, :t, :u, 0, 0, :d, 'succeeded', 1, false, 1, :f, :n)"
        )
        on_first = insert(evaluation, s=sweep, t=trial, u=0, d=first, f="f1", n=now)
        on_second = insert(evaluation, s=sweep, t=trial, u=1, d=second, f="f2", n=now)
        on_seeded = insert(evaluation, s=sweep, t=trial, u=2, d=seeded, f="f4", n=now)
    engine.dispose()

    command.upgrade(alembic_config(old_schema), "head")

    engine = make_engine(old_schema)
    try:
        with engine.connect() as connection:
            datasets = connection.execute(
                text("SELECT id, seed, payload FROM sweep_datasets ORDER BY id")
            ).all()
            assert [(d.id, d.seed, bytes(d.payload)) for d in datasets] == [
                (first, None, b"first"),
                (seeded, 4, b"seed 4"),
            ]
            pointed = dict(
                connection.execute(
                    text("SELECT id, dataset_id FROM sweep_evaluations ORDER BY id")
                ).all()
            )
            assert pointed == {on_first: first, on_second: first, on_seeded: seeded}
            # What each evaluation was trained on stays recorded on it.
            assert (
                connection.execute(
                    text("SELECT data_fingerprint FROM sweep_evaluations WHERE id = :e"),
                    {"e": on_second},
                ).scalar_one()
                == "f2"
            )
            assert connection.execute(text("SELECT epoch FROM scheduler_leases")).scalar() == 1
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(
                text(dataset),
                {"s": sweep, "seed": None, "p": b"again", "f": "f3", "n": now},
            )
        with engine.begin() as connection:  # another sweep's live comparisons are its own
            other = connection.execute(
                text(
                    "INSERT INTO sweeps (name, status, method, spec, spec_hash, tags, criterion,"
                    " objective_metric, direction, max_trials, max_parallel, units_per_trial,"
                    " code_version, created_at) VALUES ('t', 'running', 'grid', '{}', 'h', '[]',"
                    " 'c', 'm', 'maximize', 1, 1, 2, 'v', :n) RETURNING id"
                ),
                {"n": now},
            ).scalar_one()
            connection.execute(
                text(dataset), {"s": other, "seed": None, "p": b"other", "f": "f5", "n": now}
            )
    finally:
        engine.dispose()
