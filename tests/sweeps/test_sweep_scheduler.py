"""The sweep scheduler and the evaluation protocol step by step, on PostgreSQL and SQLite:
leases, take-over after a lost worker, pruning, orphaned Optuna trials, budgets and cancel."""

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.core.config import get_settings
from app.core.db import get_engine
from app.core.errors import InvalidInput
from app.models import SweepEvaluation, User, WorkerHeartbeat
from app.runs.trust import mark_users
from app.runs.wakeups import forget_gpu_workers
from app.sweeps import control, execution
from app.sweeps.scheduler import SweepScheduler, acquire_lease
from app.sweeps.study import load_study, open_storage
from ml.sweep.datasets import FrozenDataset
from ml.sweep.spec import SweepSpec
from tests.sweeps_support import GRID_SPEC, grid_spec, run_sweep_inline
from workers.sweep_evaluation import EvaluationRunner

Evaluation = SweepEvaluation.__table__  # type: ignore[attr-defined]


@pytest.fixture
def engine(committed_database: str) -> Iterator[Engine]:
    yield get_engine()


def submit(engine: Engine, spec: dict[str, Any]) -> int:
    with Session(engine) as session:
        sweep = control.submit(session, control.validate_spec(spec))
        session.commit()
        assert sweep.id is not None
        return sweep.id


def dry_run(engine: Engine, spec: dict[str, Any]) -> dict[str, Any]:
    with Session(engine) as session:
        return control.dry_run(session, control.validate_spec(spec))


def scheduler(engine: Engine, owner: str = "inline-scheduler") -> SweepScheduler:
    """Owned like run_sweep_inline's scheduler, so either can carry on a sweep."""
    return SweepScheduler(engine, get_settings(), owner=owner, wake=lambda _id: None)


def rows(engine: Engine, sweep_id: int) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT e.id, e.trial_id, e.unit_index, e.status, e.attempt, e.error,"
                " t.status AS trial_status FROM sweep_evaluations e"
                " JOIN sweep_trials t ON t.id = e.trial_id WHERE e.sweep_id = :sweep ORDER BY e.id"
            ),
            {"sweep": sweep_id},
        ).mappings()
        return [dict(row) for row in result]


def sweep_row(engine: Engine, sweep_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        return dict(
            connection.execute(text("SELECT * FROM sweeps WHERE id = :id"), {"id": sweep_id})
            .mappings()
            .one()
        )


def optuna_states(engine: Engine, sweep_id: int) -> list[str]:
    name = sweep_row(engine, sweep_id)["study_name"]
    storage = open_storage(get_settings())
    study_id = storage.get_study_id_from_name(name)
    return sorted(t.state.name for t in storage.get_all_trials(study_id, deepcopy=False))


def expire(engine: Engine, evaluation_id: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(Evaluation)
            .where(Evaluation.c.id == evaluation_id)
            .values(lease_expires_at=execution.now_utc() - timedelta(seconds=1))
        )


def test_one_scheduler_at_a_time_and_a_takeover_after_its_lease(engine: Engine) -> None:
    assert acquire_lease(engine, owner="a", seconds=30)
    assert not acquire_lease(engine, owner="b", seconds=30)
    assert acquire_lease(engine, owner="a", seconds=30)  # renewal
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE scheduler_leases SET expires_at = :past"),
            {"past": execution.now_utc() - timedelta(seconds=1)},
        )
    assert acquire_lease(engine, owner="b", seconds=30)
    assert not acquire_lease(engine, owner="a", seconds=30)
    assert not scheduler(engine, owner="a").tick()


def test_a_lost_worker_is_taken_over_and_its_late_result_is_dropped(engine: Engine) -> None:
    sweep_id = submit(
        engine, grid_spec(parameters={"w": {"values": [2.0]}}, include_baseline=False)
    )
    sched = scheduler(engine)
    sched.tick()  # prepare
    sched.tick()  # ask the one trial, queue its three evaluations
    first = execution.claim_next(engine, owner="dead-worker", lease_seconds=30)
    assert first is not None and first.attempt == 1
    expire(engine, first.evaluation_id)
    sched.tick()  # reaps: back to queued
    states = {row["id"]: row for row in rows(engine, sweep_id)}
    assert states[first.evaluation_id]["status"] == "queued"
    second = execution.claim_next(engine, owner="live-worker", lease_seconds=30)
    assert second is not None
    # Queued rows are taken oldest first: the reaped one comes back before the others.
    assert (second.evaluation_id, second.attempt) == (first.evaluation_id, 2)
    assert not execution.finish(engine, first, status="succeeded", values={"metrics": {"x": 1}})
    with pytest.raises(execution.EvaluationLost):
        execution.heartbeat(engine, first, lease_seconds=30, progress=0.5)
    assert execution.finish(
        engine, second, status="succeeded", values={"metrics": {"spearman": 0.5}}
    )
    assert states[first.evaluation_id]["attempt"] == 1
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    final = rows(engine, sweep_id)
    assert [row["status"] for row in final] == ["succeeded"] * 3
    assert next(r for r in final if r["id"] == first.evaluation_id)["attempt"] == 2


def test_an_evaluation_that_loses_its_worker_too_often_fails(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    sweep_id = submit(
        engine, grid_spec(parameters={"w": {"values": [2.0]}}, include_baseline=False)
    )
    sched = scheduler(engine)
    sched.tick()
    sched.tick()
    for attempt in (1, 2):
        claim = execution.claim_next(engine, owner=f"crash-{attempt}", lease_seconds=30)
        assert claim is not None and claim.attempt == attempt
        expire(engine, claim.evaluation_id)
        sched.tick()
    lost = next(row for row in rows(engine, sweep_id) if row["id"] == claim.evaluation_id)
    assert lost["status"] == "failed"
    assert "lease expired" in lost["error"]
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    trial_status = {row["trial_status"] for row in rows(engine, sweep_id)}
    assert trial_status == {"failed"}
    assert optuna_states(engine, sweep_id) == ["FAIL"]
    # Retrying runs the failed evaluation again and reports the trial to Optuna as finished.
    with Session(engine) as session:
        assert control.retry_failed(session, sweep_id) == 1
        session.commit()
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    assert {row["status"] for row in rows(engine, sweep_id)} == {"succeeded"}
    assert optuna_states(engine, sweep_id) == ["COMPLETE", "FAIL"]


def test_the_median_pruner_stops_a_trial_that_falls_behind(engine: Engine) -> None:
    # Two trials: 60 epochs, then a single epoch (far worse); one unit at a time.
    spec = grid_spec(
        parameters={"epochs": {"values": [60, 1]}},
        base={"solver": "faithful", "compute_uncertainty": False},
        early_stopping={"pruner": "median", "n_startup_trials": 1},
        budget={"max_parallel": 1},
        include_baseline=False,
    )
    sweep_id = submit(engine, spec)
    sched = scheduler(engine)
    runner = EvaluationRunner(engine, get_settings())
    for _ in range(60):
        sched.tick()
        claim = execution.claim_next(engine, owner="one-by-one", lease_seconds=30)
        if claim is None and sweep_row(engine, sweep_id)["status"] == "completed":
            break
        if claim is not None:
            runner.run(claim)
    assert sweep_row(engine, sweep_id)["status"] == "completed"
    by_trial: dict[int, list[str]] = {}
    for row in rows(engine, sweep_id):
        by_trial.setdefault(row["trial_id"], []).append(row["status"])
    statuses = list(by_trial.values())
    assert statuses[0] == ["succeeded"] * 3
    # The second trial was pruned after its first unit; the rest never ran.
    assert statuses[1][0] == "succeeded"
    assert statuses[1][1:] == ["cancelled", "cancelled"]
    assert optuna_states(engine, sweep_id) == ["COMPLETE", "PRUNED"]
    trial_statuses = {row["trial_status"] for row in rows(engine, sweep_id)}
    assert trial_statuses == {"succeeded", "pruned"}


def test_an_optuna_trial_asked_before_a_crash_is_told_failed(engine: Engine) -> None:
    sweep_id = submit(
        engine,
        grid_spec(
            method="random",
            parameters={"w": {"low": 0.5, "high": 2.0}},
            budget={"max_trials": 2, "max_parallel": 1},
            include_baseline=False,
        ),
    )
    scheduler(engine).tick()  # prepare: creates the study
    stored = sweep_row(engine, sweep_id)["spec"]
    # (SQLite hands JSON back as text through raw SQL.)
    spec = SweepSpec.model_validate(json.loads(stored) if isinstance(stored, str) else stored)
    study = load_study(
        open_storage(get_settings()), sweep_row(engine, sweep_id)["study_name"], spec
    )
    study.ask()  # a scheduler that asked, then died before recording the trial
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    assert optuna_states(engine, sweep_id) == ["COMPLETE", "COMPLETE", "FAIL"]


def test_wall_clock_limit_and_cancel_end_a_sweep_without_running_the_rest(engine: Engine) -> None:
    timed = submit(engine, grid_spec(budget={"max_parallel": 1}))
    sched = scheduler(engine)
    runner = EvaluationRunner(engine, get_settings())
    sched.tick()  # prepare
    sched.tick()  # the first trial, its three evaluations queued
    claim = execution.claim_next(engine, owner="w", lease_seconds=30)
    assert claim is not None
    runner.run(claim)
    with Session(engine) as session:  # the limit is now long past
        control.update_budget(
            session, timed, max_trials=None, max_parallel=None, wall_clock_seconds=0.001
        )
        session.commit()
    assert run_sweep_inline(engine, get_settings(), timed) == "completed"
    # Nothing started after the limit: the first trial's other units are cancelled and no
    # further trial was asked.
    assert [row["status"] for row in rows(engine, timed)] == ["succeeded", "cancelled", "cancelled"]
    assert {row["trial_status"] for row in rows(engine, timed)} == {"succeeded"}

    cancelled = submit(engine, grid_spec(budget={"max_parallel": 1}))
    sched = scheduler(engine)
    sched.tick()
    sched.tick()
    running = execution.claim_next(engine, owner="w", lease_seconds=30)
    assert running is not None
    with Session(engine) as session:
        control.cancel(session, cancelled)
        session.commit()
    # The running evaluation is asked to stop at its next heartbeat.
    assert execution.heartbeat(engine, running, lease_seconds=30, progress=0.1) is True
    assert execution.finish(engine, running, status="cancelled", values={})
    assert run_sweep_inline(engine, get_settings(), cancelled) == "cancelled"
    assert {row["status"] for row in rows(engine, cancelled)} == {"cancelled"}
    assert optuna_states(engine, cancelled) == ["FAIL"]
    assert sweep_row(engine, cancelled)["finished_at"] is not None


def test_a_reloaded_random_study_does_not_repeat_its_samples(engine: Engine) -> None:
    sweep_id = submit(
        engine,
        grid_spec(
            method="random",
            parameters={"w": {"low": 0.5, "high": 2.0}},
            budget={"max_trials": 2, "max_parallel": 1},
            include_baseline=False,
        ),
    )
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    with Session(engine) as session:
        control.update_budget(
            session, sweep_id, max_trials=4, max_parallel=None, wall_clock_seconds=None
        )
        session.commit()
    # run_sweep_inline starts a new scheduler: the study is loaded again from its storage.
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    with engine.connect() as connection:
        params = connection.execute(
            text("SELECT params FROM sweep_trials WHERE sweep_id = :s ORDER BY number"),
            {"s": sweep_id},
        ).scalars()
        values = [(json.loads(p) if isinstance(p, str) else p)["w"] for p in params]
    assert len(values) == 4
    assert len(set(values)) == 4


def test_a_holdout_sweep_freezes_the_live_comparisons_and_their_split(engine: Engine) -> None:
    from app.comparisons.transfer import import_comparisons
    from tests.conftest import SHARED_DATA

    import_comparisons(engine, SHARED_DATA / "licchavi-v1-reference" / "xs" / "comparisons.csv")
    spec = grid_spec(
        parameters={"w": {"values": [0.5, 2.0]}},
        repeats={"seeds": [0]},
        evaluation={"kind": "holdout", "folds": 4, "split_by": "user", "split_seed": 5},
        objectives=[{"metric": "heldout_accuracy", "direction": "maximize"}],
    )
    first = submit(engine, spec)
    assert run_sweep_inline(engine, get_settings(), first) == "completed"
    second = submit(engine, spec)
    assert run_sweep_inline(engine, get_settings(), second) == "completed"
    one, two = sweep_row(engine, first), sweep_row(engine, second)
    # Same comparisons, same split seed: the same fingerprints, so results are comparable.
    assert one["data_fingerprint"] == two["data_fingerprint"]
    assert one["split_fingerprint"] == two["split_fingerprint"]
    with engine.connect() as connection:
        metrics = connection.execute(
            text(
                "SELECT metrics FROM sweep_evaluations WHERE sweep_id = :s AND status = 'succeeded'"
            ),
            {"s": first},
        ).scalars()
        decoded = [json.loads(m) if isinstance(m, str) else m for m in metrics]
    # 2 grid points + the baseline (w=1), 4 folds each; every comparison tested exactly once
    # per trial, none of a tested user's comparisons trained on (split by user).
    assert len(decoded) == 3 * 4
    assert sum(m["n_test"] for m in decoded) == 3 * 1000
    assert all(m["n_train"] + m["n_test"] == 1000 for m in decoded)
    assert all(0.5 < m["heldout_accuracy"] <= 1 for m in decoded)

    # Users an operator trusts are frozen with the data: the sweep's evaluations train with the
    # voting rights a service run would give, and the fingerprint tells such data apart.
    with Session(engine) as session:
        trusted = session.exec(select(User.external_id).order_by(User.id).limit(3)).all()
        mark_users(session, dict.fromkeys(trusted, True))
        session.commit()
    third = submit(engine, spec)
    assert run_sweep_inline(engine, get_settings(), third) == "completed"
    assert sweep_row(engine, third)["data_fingerprint"] != one["data_fingerprint"]
    with engine.connect() as connection:
        payload = connection.execute(
            text("SELECT payload FROM sweep_datasets WHERE sweep_id = :s"), {"s": third}
        ).scalar_one()
    frozen = FrozenDataset.from_bytes(bytes(payload))
    assert frozen.comparisons.trusted is not None
    users = zip(frozen.comparisons.user_ids, frozen.comparisons.trusted, strict=True)
    marked = {str(user) for user, is_trusted in users if is_trusted}
    assert marked == set(trusted)


def test_a_holdout_sweep_without_comparisons_is_refused_or_fails_with_the_reason(
    engine: Engine,
) -> None:
    """Refused at submission (and by its dry run) while the criterion has fewer comparisons
    than folds; when they are deleted after it was accepted, the sweep fails saying why."""
    from app.comparisons.transfer import import_comparisons
    from tests.conftest import SHARED_DATA

    spec = grid_spec(
        evaluation={"kind": "holdout", "folds": 4},
        objectives=[{"metric": "heldout_accuracy", "direction": "maximize"}],
    )
    for check in (submit, dry_run):
        with pytest.raises(InvalidInput, match="'largely_recommended' has no comparisons for 4"):
            check(engine, spec)
    with pytest.raises(InvalidInput, match="unknown criterion 'zzz'"):
        submit(engine, {**spec, "criterion": "zzz"})

    import_comparisons(engine, SHARED_DATA / "licchavi-v1-reference" / "xs" / "comparisons.csv")
    sweep_id = submit(engine, spec)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM comparisons"))
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "failed"
    assert (
        "no comparisons for criterion 'largely_recommended'" in sweep_row(engine, sweep_id)["error"]
    )
    assert rows(engine, sweep_id) == []


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "pruner", ["median", "percentile", "successive_halving", "hyperband", "wilcoxon"]
)
def test_every_pruner_runs_a_sweep_to_its_end(engine: Engine, pruner: str) -> None:
    sweep_id = submit(
        engine,
        grid_spec(
            method="random",
            parameters={"w": {"low": 0.2, "high": 5.0, "log": True}},
            early_stopping={"pruner": pruner, "n_startup_trials": 1},
            budget={"max_trials": 4, "max_parallel": 2},
        ),
    )
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    states = optuna_states(engine, sweep_id)
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_optunas_connections_notice_a_dead_peer_as_ours_do(engine: Engine) -> None:
    """A scheduler cut off mid-transaction must not hold Optuna's rows past 20 s either: its
    storage connects with the same keepalives and TCP user timeout as the service's engine."""
    storage = open_storage(get_settings())
    with storage.engine.connect() as connection:
        parameters = connection.connection.dbapi_connection.info.get_parameters()
    with engine.connect() as connection:
        ours = connection.connection.dbapi_connection.info.get_parameters()
    for name in ("keepalives", "keepalives_idle", "keepalives_count", "tcp_user_timeout"):
        assert parameters.get(name) == ours.get(name) is not None, name
    storage.engine.dispose()


def test_evaluations_asking_for_cuda_wait_for_a_worker_on_the_gpu_queue(engine: Engine) -> None:
    """A worker that does not read the gpu queue neither counts nor claims the evaluations of a
    sweep whose settings ask for CUDA (they would fail there); one that reads it takes them."""
    with Session(engine) as session:  # a live GPU worker, so the cuda sweep is accepted
        session.add(WorkerHeartbeat(worker="gpu-host:1", pid=1, queues="cpu,gpu"))
        session.commit()
    forget_gpu_workers()
    one_trial = {"parameters": {"w": {"values": [2.0]}}, "include_baseline": False}
    cuda = submit(engine, grid_spec(**one_trial, base={**GRID_SPEC["base"], "device": "cuda"}))
    cpu = submit(engine, grid_spec(**one_trial))
    sched = scheduler(engine)
    sched.tick()  # prepare both
    sched.tick()  # ask each its trial, queue three evaluations each
    assert execution.queued_count(engine, limit=10, gpu=False) == 3
    assert execution.queued_count(engine, limit=10, gpu=True) == 6
    taken = []
    while claim := execution.claim_next(engine, owner="cpu", lease_seconds=30, gpu=False):
        taken.append(claim)
    assert [claim.sweep_id for claim in taken] == [cpu] * 3
    assert execution.queued_count(engine, limit=10, gpu=False) == 0
    on_gpu = execution.claim_next(engine, owner="gpu", lease_seconds=30, gpu=True)
    assert on_gpu is not None and on_gpu.sweep_id == cuda
    assert on_gpu.config["device"] == "cuda"
