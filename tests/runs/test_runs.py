"""Training-run endpoints on PostgreSQL and on the embedded SQLite default (no worker here)."""

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from app.core.db import get_engine
from app.identity.security import create_api_key
from app.main import create_app
from app.models import TrainingRun
from app.runs.freshness import comparisons_changed
from app.runs.wakeups import pending, wake_after_commit
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import ApiClient
from tests.identity.test_tokens import SECRET, bearer, claims, configure

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


def test_an_idempotency_key_is_the_callers_own(client: ApiClient) -> None:
    """Two credentials choosing the same key make two runs, each replaying its own; a key is
    never a conflict with another credential's request."""
    body = {"criteria": ["largely_recommended"], "config": {"epochs": 5}}
    service_a, service_b = client.key(WRITE), client.key(WRITE)
    alice = client.key(WRITE, user="alice")
    ids = []
    for auth in (service_a, service_b, alice):
        response = client.post(RUNS, json=body, headers={**auth, "Idempotency-Key": "shared-X"})
        assert response.status_code == 202, response.text
        assert "Idempotent-Replayed" not in response.headers
        ids.append(response.json()["id"])
    assert len(set(ids)) == 3
    for auth, run_id in zip((service_a, service_b, alice), ids, strict=True):
        again = client.post(RUNS, json=body, headers={**auth, "Idempotency-Key": "shared-X"})
        assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == run_id
    # A caller that never used the key may send any body with it.
    other = {**body, "config": {"epochs": 6}}
    fresh = client.post(
        RUNS, json=other, headers={**client.key(WRITE), "Idempotency-Key": "shared-X"}
    )
    assert fresh.status_code == 202, fresh.text
    assert fresh.json()["id"] not in ids
    # The same caller with another body is still a conflict.
    assert_problem(
        client.post(RUNS, json=other, headers={**service_a, "Idempotency-Key": "shared-X"}), 409
    )
    assert client.get(RUNS).json()["total"] == 4


def test_bearer_tokens_scope_their_keys_by_user(
    client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token's caller is its issuer and user: alice's tokens share her keys, bob's are his."""
    configure(monkeypatch, jwt_secret=SECRET, jwt_grantable_scopes=WRITE)

    def post(user: str) -> Any:
        token = jwt.encode(claims(sub=user, scope=WRITE), SECRET, "HS256")
        headers = {**bearer(token), "Idempotency-Key": "tokens"}
        response = client.post(RUNS, json={"config": {"epochs": 5}}, headers=headers)
        assert response.status_code == 202, response.text
        return response

    alice, bob, alice_again = post("alice"), post("bob"), post("alice")
    assert alice.json()["id"] != bob.json()["id"]
    assert alice_again.json()["id"] == alice.json()["id"]
    assert alice_again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in bob.headers


def test_a_retry_is_compared_as_validated_not_as_sent(client: ApiClient) -> None:
    """`1` and `1.0` are the same setting, criteria are a set, the solver may be named in the
    config or beside it: such retries replay the run rather than conflict."""
    headers = {**client.key(WRITE), "Idempotency-Key": "normalised"}
    first = client.post(
        RUNS,
        json={
            "criteria": ["reliability", "importance"],
            "solver": "faithful",
            "config": {"w": 1.0},
        },
        headers=headers,
    )
    assert first.status_code == 202, first.text
    for retry in (
        {"criteria": ["reliability", "importance"], "solver": "faithful", "config": {"w": 1}},
        {"criteria": ["importance", "reliability"], "config": {"w": 1, "solver": "faithful"}},
        {
            "criteria": ["importance", "reliability"],
            "solver": "faithful",
            "config": {"w": 1},
            "warm_start": True,
        },
    ):
        again = client.post(RUNS, json=retry, headers=headers)
        assert again.status_code == 202, (retry, again.text)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
    for different in (
        {"criteria": ["reliability", "importance"], "solver": "faithful", "config": {"w": 1.5}},
        {"criteria": ["reliability"], "solver": "faithful", "config": {"w": 1}},
        {"criteria": ["reliability", "importance"], "config": {"w": 1}},
        {
            "criteria": ["reliability", "importance"],
            "solver": "faithful",
            "config": {"w": 1},
            "warm_start": False,
        },
    ):
        assert_problem(client.post(RUNS, json=different, headers=headers), 409)
    assert client.get(RUNS).json()["total"] == 1


def test_concurrent_retries_of_each_caller_make_one_run_each(committed_database: str) -> None:
    """Twelve identical requests at once from each of two callers with one key: each caller
    gets exactly one run, the other caller's never, and every answer is a 202."""
    with Session(get_engine()) as session:
        keys = [create_api_key(session, name=f"c{i}", scopes=[WRITE])[1] for i in range(2)]
        session.commit()
    barrier = threading.Barrier(24)

    def post(key: str) -> tuple[str, int, int]:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "at-once"}
        barrier.wait(30)
        response = client.post(RUNS, json={"config": {"epochs": 5}}, headers=headers)
        return key, response.status_code, response.json().get("id", 0)

    with TestClient(create_app()) as client, ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(post, keys * 12))
        total = client.get(RUNS).json()["total"]
    assert {status for _key, status, _id in answers} == {202}
    ids = {key: {run_id for k, _status, run_id in answers if k == key} for key in keys}
    assert all(len(each) == 1 for each in ids.values())
    assert ids[keys[0]] != ids[keys[1]] and total == 2


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


def test_a_users_credential_cancels_only_the_runs_it_started(client: ApiClient) -> None:
    """A user key with `runs:write` (a researcher's) may start runs and cancel its own, not the
    service's or another user's: they are what every user's scores come from."""
    service, alice, bob = (
        client.key(WRITE),
        client.key(WRITE, user="alice"),
        client.key(WRITE, user="bob"),
    )
    services_run = client.post(RUNS, json={}, headers=service).json()["id"]
    alices_run = client.post(RUNS, json={}, headers=alice).json()["id"]
    for run_id, who in ((services_run, alice), (alices_run, bob)):
        refused = assert_problem(client.post(f"{RUNS}/{run_id}/cancel", headers=who), 403)
        assert "steers only the runs it started" in refused["detail"]
        assert client.get(f"{RUNS}/{run_id}").json()["status"] == "queued"
    assert client.post(f"{RUNS}/{alices_run}/cancel", headers=alice).status_code == 200
    # A service credential cancels any run; an unknown run is still a 404.
    assert client.post(f"{RUNS}/{services_run}/cancel", headers=service).status_code == 200
    assert_problem(client.post(f"{RUNS}/999999/cancel", headers=alice), 404)


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
