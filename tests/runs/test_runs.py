"""Training-run endpoints on PostgreSQL and on the embedded SQLite default (no worker here)."""

import subprocess
import sys
from typing import Any

from sqlmodel import Session, col, select

from app.models import TrainingRun
from app.runs.freshness import comparisons_changed
from app.runs.wakeups import pending, wake_after_commit
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import ApiClient

RUNS = "/api/v1/training-runs"
WRITE = "runs:write"


def test_starting_a_run_needs_the_runs_write_scope(client: ApiClient) -> None:
    assert_problem(client.post(RUNS, json={}), 401)
    assert_problem(client.post(RUNS, json={}, headers=client.key("comparisons:write")), 403)


def test_post_queues_a_run_with_its_resolved_config(client: ApiClient) -> None:
    response = client.post(
        RUNS,
        json={
            "criteria": ["reliability", "largely_recommended"],
            "solver": "faithful",
            "config": {"w": 2, "epochs": 30},
        },
        headers=client.key(WRITE),
    )
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["Location"] == f"{RUNS}/{run['id']}"
    assert (run["status"], run["trigger"], run["solver"]) == ("queued", "manual", "faithful")
    assert run["criteria"] == ["largely_recommended", "reliability"]
    assert run["config"]["w"] == 2.0 and run["config"]["epochs"] == 30
    assert run["config"]["lr_node"] == 0.9  # defaults are filled in and recorded
    assert len(run["config_hash"]) == 64 and run["max_epochs"] == 30
    assert (run["progress"], run["attempt"], run["eta_seconds"]) == (0.0, 0, None)
    shown = client.get(f"{RUNS}/{run['id']}").json()
    assert shown["status"] == "queued" and shown["metrics"] == {}

    # Without a solver the default runs: the converged solver with personal scores.
    converged = client.post(RUNS, json={}, headers=client.key(WRITE)).json()
    assert converged["solver"] == "converged" and converged["criteria"] is None
    assert converged["config"]["personalise"] is None


def test_an_idempotency_key_replays_the_same_run_and_rejects_another_body(
    client: ApiClient,
) -> None:
    headers = {**client.key(WRITE), "Idempotency-Key": "retry-me"}
    first = client.post(RUNS, json={"config": {"epochs": 5}}, headers=headers)
    again = client.post(RUNS, json={"config": {"epochs": 5}}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get(RUNS).json()["total"] == 1
    body = assert_problem(client.post(RUNS, json={"config": {"epochs": 6}}, headers=headers), 409)
    assert "Idempotency-Key" in body["detail"]


def test_invalid_settings_and_unknown_criteria_are_rejected(client: ApiClient) -> None:
    auth = client.key(WRITE)
    unknown = assert_problem(client.post(RUNS, json={"config": {"speed": 3}}, headers=auth), 422)
    assert unknown["errors"][0]["pointer"] == "/config/speed"
    assert unknown["errors"][0]["message"] == "unknown setting"
    negative = assert_problem(client.post(RUNS, json={"config": {"w": -1}}, headers=auth), 422)
    assert negative["errors"][0]["pointer"] == "/config/w"
    assert_problem(client.post(RUNS, json={"solver": "adam"}, headers=auth), 422)
    criterion = assert_problem(client.post(RUNS, json={"criteria": ["nope"]}, headers=auth), 422)
    assert "nope" in criterion["detail"]
    assert_problem(client.post(RUNS, json={"criteria": ["reliability"] * 2}, headers=auth), 422)
    assert client.get(RUNS).json()["total"] == 0


def test_a_cuda_run_is_refused_while_no_worker_reads_the_gpu_queue(client: ApiClient) -> None:
    """Only a worker that reads the gpu queue trains a `device: cuda` run; with none alive the
    run would wait for ever, so it is refused, saying why, and nothing is stored."""
    auth = client.key(WRITE)
    refused = assert_problem(
        client.post(RUNS, json={"config": {"device": "cuda"}}, headers=auth), 409
    )
    assert "gpu queue" in refused["detail"]
    assert client.get(RUNS).json()["total"] == 0
    assert client.post(RUNS, json={"config": {"device": "cpu"}}, headers=auth).status_code == 202


def test_list_filters_and_pages_newest_first(client: ApiClient) -> None:
    auth = client.key(WRITE)
    ids = [
        client.post(RUNS, json=body, headers=auth).json()["id"]
        for body in ({}, {"criteria": ["reliability"]}, {"criteria": ["importance"]})
    ]
    client.post(f"{RUNS}/{ids[0]}/cancel", headers=auth)
    page = client.get(RUNS, params={"limit": 2}).json()
    assert [run["id"] for run in page["items"]] == ids[::-1][:2]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [r["id"] for r in client.get(RUNS, params={"offset": 2}).json()["items"]] == [ids[0]]
    queued = client.get(RUNS, params={"status": "queued"}).json()
    assert sorted(run["id"] for run in queued["items"]) == ids[1:]
    # A run on every criterion trains `reliability` too.
    reliability = client.get(RUNS, params={"criterion": "reliability"}).json()
    assert sorted(run["id"] for run in reliability["items"]) == [ids[0], ids[1]]
    assert client.get(RUNS, params={"trigger": "auto"}).json()["total"] == 0
    assert_problem(client.get(RUNS, params={"status": "done"}), 422)


def test_cancel_a_queued_run_once(client: ApiClient) -> None:
    auth = client.key(WRITE)
    run_id = client.post(RUNS, json={}, headers=auth).json()["id"]
    assert_problem(client.post(f"{RUNS}/{run_id}/cancel"), 401)
    cancelled = client.post(f"{RUNS}/{run_id}/cancel", headers=auth)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert_problem(client.post(f"{RUNS}/{run_id}/cancel", headers=auth), 409)
    assert_problem(client.post(f"{RUNS}/999999/cancel", headers=auth), 404)
    assert_problem(client.get(f"{RUNS}/999999"), 404)
    assert_problem(client.get(f"{RUNS}/999999/metrics"), 404)
    assert client.get(f"{RUNS}/{run_id}/metrics").json() == {"run_id": run_id, "items": []}
    assert_problem(client.get(f"{RUNS}/{run_id}/plots/loss.png"), 404)


def test_changed_comparisons_queue_one_auto_run_per_criterion(client: ApiClient) -> None:
    auth = client.key("comparisons:write")
    client.post("/api/v1/comparisons", json=payload(largely_recommended=6), headers=auth)
    client.post(
        "/api/v1/comparisons", json=payload(b="yt:ccc", largely_recommended=2), headers=auth
    )
    client.post("/api/v1/comparisons", json=payload(importance=1), headers=auth)
    # Re-posting an unchanged score changes nothing and schedules nothing new.
    client.post("/api/v1/comparisons", json=payload(importance=1), headers=auth)
    runs = client.get(RUNS, params={"trigger": "auto"}).json()["items"]
    assert sorted((run["criteria"][0], run["status"]) for run in runs) == [
        ("importance", "queued"),
        ("largely_recommended", "queued"),
    ]
    assert all(run["warm_start"] for run in runs)


def test_auto_runs_can_be_switched_off(client: ApiClient, monkeypatch: Any) -> None:
    from tests.conftest import reset_caches

    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    client.post("/api/v1/comparisons", json=payload(), headers=client.key("comparisons:write"))
    assert client.get(RUNS).json()["total"] == 0


def test_a_wakeup_is_dropped_on_rollback(pg_session: Session) -> None:
    comparisons_changed(pg_session, criteria=["largely_recommended"])
    run_id = pg_session.exec(select(TrainingRun.id).where(col(TrainingRun.trigger) == "auto")).one()
    assert [w.run_id for w in pending(pg_session)] == [run_id]
    # A second change while that run is queued adds neither a run nor a message.
    assert comparisons_changed(pg_session, criteria=["largely_recommended"]) == []
    assert len(pending(pg_session)) == 1
    pg_session.rollback()
    assert pending(pg_session) == []
    wake_after_commit(pg_session, run_id=12345)
    with pg_session.begin_nested():
        pass  # a savepoint's commit is not the transaction's
    assert [w.run_id for w in pending(pg_session)] == [12345]


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys, app.main, app.runs.service, app.runs.freshness; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
