"""Sweeps end to end on PostgreSQL, Redis and two `licchavi worker` processes: exact counts,
a worker killed mid-trial, pause and resume, a TPE search against the defaults, and replay."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.config import get_settings
from app.core.db import get_engine
from app.main import create_app
from app.sweeps.study import open_storage
from tests.conftest import (
    create_database,
    drop_database,
    emptied_redis_url,
    reset_caches,
)
from tests.helpers import wait_for
from tests.workers.training_support import admin_headers, kill_worker, start_worker, stop_worker

FAST_SWEEPS = {
    "SWEEP_LEASE_SECONDS": "3",
    "SWEEP_HEARTBEAT_SECONDS": "0.3",
    "SWEEP_SCHEDULER_INTERVAL_SECONDS": "0.2",
    "SWEEP_SCHEDULER_LEASE_SECONDS": "3",
    "SWEEP_RESEND_AFTER_SECONDS": "2",
}
GRID = {"w": {"values": [0.5, 1, 2]}, "w0": {"values": [0.5, 1]}}
SMALL = {"n_users": 20, "n_videos": 60, "comps_per_video": 3}
# Big enough that one evaluation lasts a few seconds (a kill lands mid-training), and
# precision 1.0 so the faithful solver runs all its epochs.
SLOW = {"n_users": 200, "n_videos": 2000, "comps_per_video": 8}
SLOW_BASE = {"solver": "faithful", "epochs": 3000, "precision": 1.0}
FINAL = {"completed", "cancelled", "failed"}


class Stack:
    """Two workers on a fresh database (for the whole module); the API in-process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.workers = [start_worker(env), start_worker(env)]
        self.client: TestClient
        self.headers: dict[str, str] = {}

    def submit(self, spec: dict[str, Any]) -> int:
        response = self.client.post("/api/v1/sweeps", json=spec, headers=self.headers)
        assert response.status_code == 202, response.text
        return int(response.json()["id"])

    def sweep(self, sweep_id: int) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/sweeps/{sweep_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_until(self, sweep_id: int, statuses: set[str], timeout: float) -> dict[str, Any]:
        return wait_for(
            f"sweep {sweep_id} to reach {sorted(statuses)}",
            lambda: (body := self.sweep(sweep_id))["status"] in statuses and body,
            timeout,
            every=0.3,
        )

    def stop(self) -> None:
        for worker in self.workers:
            stop_worker(worker)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_url = emptied_redis_url()
    url, admin = create_database("licchavi_sweeps")
    env = {
        **FAST_SWEEPS,
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": redis_url,
        "AUTO_TRAIN_ENABLED": "false",
        "DATA_DIR": str(tmp_path_factory.mktemp("sweeps")),
    }
    stack = Stack(env)
    try:
        yield stack
    finally:
        stack.stop()
        drop_database(url, admin)


@pytest.fixture
def stack(workers: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The module's workers, with this test's process pointed at their database and broker."""
    for name, value in workers.env.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    with TestClient(create_app()) as client:
        workers.client = client
        workers.headers = admin_headers()
        yield workers
    from app.core.db import dispose_engine

    dispose_engine()


def evaluations(sweep_id: int) -> list[dict[str, Any]]:
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, trial_id, unit_index, status, attempt, metrics, worker"
                " FROM sweep_evaluations WHERE sweep_id = :sweep ORDER BY id"
            ),
            {"sweep": sweep_id},
        ).mappings()
        return [dict(row) for row in rows]


def event_counts(sweep_id: int, status: str) -> dict[int, int]:
    """How many times each evaluation entered `status`."""
    with get_engine().connect() as connection:
        rows = connection.execute(
            text(
                "SELECT evaluation_id, count(*) FROM sweep_events WHERE sweep_id = :sweep"
                " AND status = :status AND evaluation_id IS NOT NULL GROUP BY evaluation_id"
            ),
            {"sweep": sweep_id, "status": status},
        ).all()
    return {int(evaluation): int(count) for evaluation, count in rows}


def optuna_states(sweep: dict[str, Any]) -> dict[str, int]:
    study = open_storage(get_settings())
    study_id = study.get_study_id_from_name(sweep["study_name"])
    states: dict[str, int] = {}
    for trial in study.get_all_trials(study_id, deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states


def grid_spec(name: str, generator: dict[str, Any], base: dict[str, Any] | None = None) -> dict:
    return {
        "name": name,
        "base": base or {},
        "parameters": GRID,
        "method": "grid",
        "repeats": {"seeds": [0, 1, 2]},
        "evaluation": {"kind": "synthetic", "generator": generator},
        "objectives": [{"metric": "spearman", "direction": "maximize"}],
        "budget": {"max_parallel": 6},
    }


def assert_exactly_once(sweep_id: int, expected: int) -> list[dict[str, Any]]:
    rows = evaluations(sweep_id)
    assert len(rows) == expected
    assert [row["status"] for row in rows] == ["succeeded"] * expected
    assert all(row["metrics"] and "spearman" in row["metrics"] for row in rows)
    assert set(event_counts(sweep_id, "succeeded").values()) == {1}
    assert len(event_counts(sweep_id, "succeeded")) == expected
    return rows


def test_grid_3x2_with_3_seeds_runs_exactly_18_evaluations(stack: Stack) -> None:
    sweep_id = stack.submit(grid_spec("grid", SMALL))
    sweep = stack.wait_until(sweep_id, FINAL, 180)
    assert sweep["status"] == "completed", sweep
    rows = assert_exactly_once(sweep_id, 18)
    assert {row["attempt"] for row in rows} == {1}
    assert sweep["progress"]["trials"] == {"succeeded": 6}
    # The base settings (w=1, w0=1) are a grid point, so no separate baseline trial; Optuna was
    # told each of the six trials once.
    assert optuna_states(sweep) == {"COMPLETE": 6}
    trials = stack.client.get(f"/api/v1/sweeps/{sweep_id}/trials").json()
    assert sorted((t["params"]["w"], t["params"]["w0"]) for t in trials["items"]) == [
        (0.5, 0.5),
        (0.5, 1),
        (1, 0.5),
        (1, 1),
        (2, 0.5),
        (2, 1),
    ]
    assert all(t["n_succeeded"] == 3 for t in trials["items"])


def test_a_worker_killed_mid_trial_still_ends_with_exactly_18_results(stack: Stack) -> None:
    sweep_id = stack.submit(grid_spec("kill", SLOW, SLOW_BASE))
    victim = stack.workers[0]

    def victim_running() -> dict[str, Any] | None:
        hosts = {str(victim.pid)}
        for row in evaluations(sweep_id):
            # worker owner is host:pid:token of the pool process; match the victim's children
            if row["status"] == "running" and row["worker"] and _pool_of(row["worker"]) in hosts:
                return row
        return None

    running = wait_for("an evaluation running on the first worker", victim_running, 120, 0.1)
    kill_worker(victim)
    stack.workers[0] = start_worker(stack.env)
    sweep = stack.wait_until(sweep_id, FINAL, 300)
    assert sweep["status"] == "completed", sweep
    rows = assert_exactly_once(sweep_id, 18)
    redone = next(row for row in rows if row["id"] == running["id"])
    # Taken over after the lease expired (a second take-over is possible on a slow machine,
    # and is just as safe): every start is recorded, and only the last attempt's result kept.
    assert redone["attempt"] >= 2
    assert event_counts(sweep_id, "running")[running["id"]] == redone["attempt"]
    assert optuna_states(sweep) == {"COMPLETE": 6}


def _pool_of(owner: str) -> str:
    """The parent pid of the pool process named in a lease owner `host:pid:token`."""
    pid = owner.split(":")[-2]
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return ""


def test_pause_then_resume_loses_and_repeats_nothing(stack: Stack) -> None:
    sweep_id = stack.submit(
        grid_spec("pause", SLOW, {"solver": "faithful", "epochs": 800, "precision": 1.0})
    )
    wait_for(
        "a first result",
        lambda: any(row["status"] == "succeeded" for row in evaluations(sweep_id)),
        120,
        0.2,
    )
    paused = stack.client.post(f"/api/v1/sweeps/{sweep_id}/pause", headers=stack.headers)
    assert paused.status_code == 200, paused.text
    # Running evaluations finish; nothing queued is left for a worker to start.
    wait_for(
        "running evaluations to finish",
        lambda: all(row["status"] in ("pending", "succeeded") for row in evaluations(sweep_id)),
        120,
        0.2,
    )
    started = len(event_counts(sweep_id, "running"))
    assert 0 < started < 18
    time.sleep(3.0)  # a paused sweep starts nothing, however long it waits
    assert len(event_counts(sweep_id, "running")) == started
    assert stack.sweep(sweep_id)["status"] == "paused"

    resumed = stack.client.post(f"/api/v1/sweeps/{sweep_id}/resume", headers=stack.headers)
    assert resumed.status_code == 200, resumed.text
    sweep = stack.wait_until(sweep_id, FINAL, 300)
    assert sweep["status"] == "completed", sweep
    rows = assert_exactly_once(sweep_id, 18)
    assert {row["attempt"] for row in rows} == {1}
    assert set(event_counts(sweep_id, "running").values()) == {1}
    assert optuna_states(sweep) == {"COMPLETE": 6}


def test_tpe_over_learning_rates_and_weights_reports_whether_it_beats_the_defaults(
    stack: Stack,
) -> None:
    spec = {
        "name": "tpe vs defaults",
        "method": "tpe",
        "parameters": {
            "lr_node": {"low": 0.1, "high": 3.0, "log": True},
            "lr_gen": {"low": 0.01, "high": 1.0, "log": True},
            "w": {"low": 0.1, "high": 10.0, "log": True},
            "w0": {"low": 0.1, "high": 10.0, "log": True},
        },
        "repeats": {"seeds": [0, 1, 2]},
        "evaluation": {
            "kind": "synthetic",
            "generator": {"n_users": 30, "n_videos": 120, "comps_per_video": 4},
        },
        "objectives": [{"metric": "spearman", "direction": "maximize"}],
        "budget": {"max_trials": 12, "max_parallel": 2},
        "sampler_seed": 3,
    }
    sweep_id = stack.submit(spec)
    sweep = stack.wait_until(sweep_id, FINAL, 300)
    assert sweep["status"] == "completed", sweep
    # 12 searched trials plus the baseline (the defaults), each with 3 seeds.
    assert_exactly_once(sweep_id, 13 * 3)
    assert optuna_states(sweep) == {"COMPLETE": 12}
    board = stack.client.get(f"/api/v1/sweeps/{sweep_id}/leaderboard").json()
    incumbent = board["incumbent_id"]
    baseline = stack.client.get(
        f"/api/v1/sweeps/{sweep_id}/trials", params={"filter": "source = baseline"}
    ).json()["items"]
    assert [trial["id"] for trial in baseline] == [incumbent]
    best = board["items"][0]
    if best["trial_id"] == incumbent:
        verdict = "the defaults rank first: the search did not beat them"
    else:
        paired = best["vs_incumbent"]
        assert paired["n_pairs"] == 3
        # "better" is exactly "the paired interval lies above zero" — never the raw means.
        assert paired["better"] == (paired["ci_low"] > 0)
        verdict = (
            f"best trial {best['trial_id']} {'beats' if paired['better'] else 'does not beat'} the"
            f" defaults: Δspearman {paired['mean_difference']:+.4f}"
            f" [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}], p={paired['p_value']}"
        )
    print(verdict)


def test_replaying_a_synthetic_trial_reproduces_its_metrics(stack: Stack) -> None:
    sweep_id = stack.submit(
        {
            **grid_spec("replay", SMALL),
            "parameters": {"w": {"values": [0.5]}},
            "include_baseline": False,
        }
    )
    assert stack.wait_until(sweep_id, FINAL, 120)["status"] == "completed"
    [original] = stack.client.get(f"/api/v1/sweeps/{sweep_id}/trials").json()["items"]
    rerun = stack.client.post(
        f"/api/v1/sweeps/{sweep_id}/trials/{original['id']}/rerun",
        json={"overrides": {}},
        headers=stack.headers,
    )
    assert rerun.status_code == 202, rerun.text
    assert rerun.json()["parent_id"] == original["id"]
    assert stack.wait_until(sweep_id, FINAL, 120)["status"] == "completed"
    replay = stack.client.get(f"/api/v1/sweeps/{sweep_id}/trials/{rerun.json()['id']}").json()
    first = stack.client.get(f"/api/v1/sweeps/{sweep_id}/trials/{original['id']}").json()
    # Same frozen data, same seeds, same settings: the same numbers (timings aside).
    tolerance = 1e-9
    for before, after in zip(first["evaluations"], replay["evaluations"], strict=True):
        for name, value in before["metrics"].items():
            if name in ("training_seconds", "peak_memory_bytes"):
                continue
            assert after["metrics"][name] == pytest.approx(value, abs=tolerance), name
        assert after["data_fingerprint"] == before["data_fingerprint"]
        assert after["split_fingerprint"] == before["split_fingerprint"]
        assert after["config_hash"] == before["config_hash"]
