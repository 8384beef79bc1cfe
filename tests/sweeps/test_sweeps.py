"""Sweep endpoints on PostgreSQL and on the embedded SQLite default; sweeps that need finished
trials are run to their end in this process by the real scheduler and evaluation runner."""

import csv
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import get_engine
from app.identity.security import create_api_key
from app.main import create_app
from app.models import SweepEvaluation
from app.sweeps import execution
from app.sweeps.scheduler import SweepScheduler
from ml.sweep.spec import parse_spec, spec_hash
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import ApiClient, create_database, drop_database, migrate, reset_caches
from tests.sweeps_support import grid_spec, run_sweep_inline

SWEEPS = "/api/v1/sweeps"
RUNS = "/api/v1/training-runs"
DEFAULTS = "/api/v1/training-defaults"
WRITE = "sweeps:write"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def submit(client: TestClient, auth: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = client.post(SWEEPS, json=grid_spec(**overrides), headers=auth)
    assert response.status_code == 202, response.text
    return dict(response.json())


# --- submission ---------------------------------------------------------------------------------


def test_the_schema_describes_a_spec(client: ApiClient) -> None:
    response = client.get(f"{SWEEPS}/schema")
    assert response.status_code == 200
    schema = response.json()
    assert schema["required"] == ["name"]
    for field in ("parameters", "method", "objectives", "budget", "repeats", "evaluation"):
        assert field in schema["properties"], field
    assert {"HoldoutEvaluation", "SyntheticEvaluation", "Parameter"} <= set(schema["$defs"])


def test_a_json_spec_is_accepted_with_every_default_resolved(client: ApiClient) -> None:
    response = client.post(SWEEPS, json=grid_spec(tags=["nightly"]), headers=client.key(WRITE))
    assert response.status_code == 202, response.text
    sweep = response.json()
    assert response.headers["Location"] == f"{SWEEPS}/{sweep['id']}"
    expected = parse_spec(grid_spec(tags=["nightly"]))
    assert sweep["spec"] == expected.resolved() and sweep["spec_hash"] == spec_hash(expected)
    assert sweep["spec"]["base"]["lr_node"] == 0.9  # a default written out
    assert (sweep["status"], sweep["method"], sweep["tags"]) == ("preparing", "grid", ["nightly"])
    assert (sweep["objective_metric"], sweep["direction"]) == ("spearman", "maximize")
    assert sweep["budget"] == {"max_trials": 6, "max_parallel": 2, "wall_clock_seconds": None}
    assert sweep["units_per_trial"] == 3 and sweep["started_at"] is None
    shown = client.get(response.headers["Location"]).json()
    assert shown["spec"] == sweep["spec"]
    assert shown["progress"] == {"trials": {}, "evaluations": {}, "best": None}


def test_a_yaml_spec_is_accepted(client: ApiClient) -> None:
    auth = client.key(WRITE)
    body = yaml.safe_dump(grid_spec(name="from yaml", tags=["yaml"]))
    for media_type in ("application/yaml", "text/yaml; charset=utf-8"):
        response = client.post(SWEEPS, content=body, headers={**auth, "Content-Type": media_type})
        assert response.status_code == 202, response.text
        assert (
            response.json()["spec"]
            == parse_spec(grid_spec(name="from yaml", tags=["yaml"])).resolved()
        )
    tagged = client.get(SWEEPS, params={"tag": "yaml"}).json()
    assert tagged["total"] == 2 and client.get(SWEEPS, params={"tag": "other"}).json()["total"] == 0


def test_a_cuda_sweep_is_refused_while_no_worker_reads_the_gpu_queue(client: ApiClient) -> None:
    """Only a worker that reads the gpu queue runs the evaluations of a sweep whose settings ask
    for CUDA; with none alive they would wait for ever, so the sweep is refused, saying why."""
    auth = client.key(WRITE)
    cuda = grid_spec(base={"epochs": 20, "device": "cuda"})
    refused = assert_problem(client.post(SWEEPS, json=cuda, headers=auth), 409)
    assert "gpu queue" in refused["detail"]
    assert client.get(SWEEPS).json()["total"] == 0
    assert client.post(SWEEPS, json=grid_spec(), headers=auth).status_code == 202


def test_a_dry_run_counts_trials_and_stores_nothing(client: ApiClient) -> None:
    auth = client.key(WRITE)
    response = client.post(SWEEPS, params={"dry_run": "true"}, json=grid_spec(), headers=auth)
    assert response.status_code == 200, response.text
    plan = response.json()
    # The base settings (w=1, w0=1) are a grid point, so there is no separate baseline.
    assert (plan["n_trials"], plan["units_per_trial"], plan["n_evaluations"]) == (6, 3, 18)
    assert plan["includes_baseline"] is False
    assert [trial["params"] for trial in plan["trials"]] == parse_spec(grid_spec()).grid()
    assert plan["units"] == [
        {"unit_index": index, "seed": seed, "fold": 1} for index, seed in enumerate((0, 1, 2))
    ]
    off_grid = grid_spec(parameters={"w": {"values": [0.5, 2.0]}, "w0": {"values": [0.5, 2.0]}})
    plan = client.post(SWEEPS, params={"dry_run": "true"}, json=off_grid, headers=auth).json()
    assert (plan["n_trials"], plan["n_evaluations"], plan["includes_baseline"]) == (5, 15, True)
    # A budget that stops the grid before the base point still runs the base settings.
    truncated = grid_spec(budget={"max_trials": 2})
    plan = client.post(SWEEPS, params={"dry_run": "true"}, json=truncated, headers=auth).json()
    assert (plan["n_trials"], plan["includes_baseline"]) == (3, True)
    assert [trial["params"] for trial in plan["trials"]] == [
        {"w": 0.5, "w0": 0.5},
        {"w": 0.5, "w0": 1.0},
    ]
    sampled = grid_spec(
        method="tpe",
        parameters={"w": {"low": 0.1, "high": 4, "log": True}},
        budget={"max_trials": 8},
    )
    plan = client.post(SWEEPS, params={"dry_run": "true"}, json=sampled, headers=auth).json()
    assert (plan["n_trials"], plan["trials"], plan["n_evaluations"]) == (9, None, 27)
    # It refuses what the submission would: the web editor validates a spec by its dry run.
    unknown = client.post(
        SWEEPS,
        params={"dry_run": "true"},
        json=grid_spec(
            criterion="zzz",
            evaluation={"kind": "holdout"},
            objectives=[{"metric": "heldout_accuracy", "direction": "maximize"}],
        ),
        headers=auth,
    )
    assert assert_problem(unknown, 422)["errors"][0]["pointer"] == "/criterion"
    assert client.get(SWEEPS).json()["total"] == 0


@pytest.mark.parametrize(
    ("overrides", "pointer", "message"),
    [
        ({"repeats": {"seeds": [1, 1]}}, "/repeats/seeds", "seeds must be distinct"),
        (
            {"evaluation": {"kind": "synthetic", "generator": {"seed": 3}}},
            "/evaluation/generator",
            "the generator's seed comes from repeats.seeds",
        ),
        ({"evaluation": {"kind": "holdout", "folds": 1}}, "/evaluation/folds", "greater than"),
        ({"parameters": {"speed": {"values": [1]}}}, "/parameters/speed", "not a training setting"),
        (
            {"parameters": {"w": {"low": 0.5, "high": 2}}},
            "/parameters/w",
            "a grid over a range needs a step",
        ),
        (
            {
                "objectives": [{"metric": "spearman", "direction": "maximize"}],
                "evaluation": {"kind": "holdout"},
            },
            "/objectives",
            "'spearman' is not recorded by a holdout evaluation",
        ),
        ({"tags": ["a,b"]}, "/tags", "no comma"),
        ({"colour": "blue"}, "/colour", "unknown field"),
    ],
)
def test_an_invalid_spec_points_at_the_field(
    client: ApiClient, overrides: dict[str, Any], pointer: str, message: str
) -> None:
    content = grid_spec(**overrides)
    body = assert_problem(client.post(SWEEPS, json=content, headers=client.key(WRITE)), 422)
    first = body["errors"][0]
    assert first["pointer"] == pointer and message in first["message"], first
    assert body["detail"] == f"{pointer}: {first['message']}"
    assert client.get(SWEEPS).json()["total"] == 0


def test_unreadable_bodies_and_other_media_types_are_refused(client: ApiClient) -> None:
    auth = client.key(WRITE)
    yaml_type = {**auth, "Content-Type": "application/yaml"}
    broken = assert_problem(client.post(SWEEPS, content=b"name: [", headers=yaml_type), 422)
    assert broken["detail"].startswith("Body is not valid YAML")
    listing = assert_problem(client.post(SWEEPS, content=b"- name: x", headers=yaml_type), 422)
    assert listing["errors"][0]["pointer"] == "/"
    json_type = {**auth, "Content-Type": "application/json"}
    assert (
        "not valid JSON"
        in assert_problem(client.post(SWEEPS, content=b"{", headers=json_type), 422)["detail"]
    )
    for media_type in ("text/plain", "application/xml", "multipart/form-data"):
        body = assert_problem(
            client.post(SWEEPS, content=b"name: x", headers={**auth, "Content-Type": media_type}),
            415,
        )
        assert media_type in body["detail"]
    assert client.get(SWEEPS).json()["total"] == 0


def test_writing_needs_the_sweeps_write_scope(client: ApiClient) -> None:
    sweep = submit(client, client.key(WRITE))
    other = client.key("runs:write", "comparisons:write")
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("post", SWEEPS, grid_spec()),
        ("post", f"{SWEEPS}/{sweep['id']}/pause", None),
        ("post", f"{SWEEPS}/{sweep['id']}/cancel", None),
        ("patch", f"{SWEEPS}/{sweep['id']}", {"max_trials": 2}),
        ("post", f"{SWEEPS}/{sweep['id']}/retry-failed", None),
        ("post", f"{SWEEPS}/{sweep['id']}/promote", {}),
    ]
    for method, url, body_json in writes:
        assert_problem(client.request(method, url, json=body_json), 401)
        body = assert_problem(client.request(method, url, json=body_json, headers=other), 403)
        assert "sweeps:write" in body["detail"]
    # Reading needs no key; nothing above changed the sweep.
    shown = client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert shown["status"] == "preparing" and shown["budget"]["max_trials"] == 6
    assert client.get(SWEEPS).json()["total"] == 1


def test_a_holdout_spec_needs_a_known_criterion(client: ApiClient) -> None:
    auth = client.key(WRITE)
    body = assert_problem(
        client.post(SWEEPS, json={"name": "h", "criterion": "nope"}, headers=auth), 422
    )
    assert body["errors"][0]["pointer"] == "/criterion" and "'nope'" in body["detail"]
    # Known but without the comparisons its 5 folds split: refused rather than failing later.
    spec = {"name": "h", "criterion": "reliability"}
    for dry_run in ("true", "false"):
        few = client.post(SWEEPS, json=spec, headers=auth, params={"dry_run": dry_run})
        assert "'reliability' has no comparisons for 5 folds" in assert_problem(few, 422)["detail"]
    rows = [payload(user=f"u{i}", a=f"yt:a{i}", b=f"yt:b{i}", reliability=3) for i in range(5)]
    written = client.post(
        "/api/v1/comparisons/bulk", json=rows, headers=client.key("comparisons:write")
    )
    assert written.status_code == 200, written.text
    known = client.post(SWEEPS, json=spec, headers=auth)
    assert known.status_code == 202 and known.json()["spec"]["evaluation"]["kind"] == "holdout"
    # Synthetic data is generated for whatever criterion it names.
    invented = client.post(SWEEPS, json=grid_spec(criterion="invented"), headers=auth)
    assert invented.status_code == 202
    assert client.get(SWEEPS).json()["total"] == 2


def test_a_users_credential_steers_only_its_own_sweeps_and_never_promotes(
    client: ApiClient,
) -> None:
    """A user key with `sweeps:write` (a researcher's) submits sweeps and steers those it
    submitted; the service's and other users' sweeps, and the production training defaults,
    are not its to change."""
    service, alice = client.key(WRITE), client.key(WRITE, user="alice")
    bob = client.key(WRITE, user="bob")
    services = submit(client, service)["id"]
    alices = submit(client, alice)["id"]
    for sweep_id, who in ((services, alice), (alices, bob)):
        for method, path, body in (
            ("post", "pause", None),
            ("post", "cancel", None),
            ("post", "retry-failed", None),
            ("patch", "", {"max_parallel": 2}),
        ):
            url = f"{SWEEPS}/{sweep_id}/{path}".rstrip("/")
            refused = client.request(method, url, json=body, headers=who)
            assert "steers only the sweeps it started" in assert_problem(refused, 403)["detail"]
        assert client.get(f"{SWEEPS}/{sweep_id}").json()["status"] == "preparing"
    assert client.post(f"{SWEEPS}/{alices}/pause", headers=alice).json()["status"] == "paused"
    assert client.post(f"{SWEEPS}/{services}/pause", headers=service).status_code == 200
    # Promotion changes every run's defaults: a service credential's call, even for her sweep.
    for sweep_id in (services, alices):
        promoted = client.post(f"{SWEEPS}/{sweep_id}/promote", json={}, headers=alice)
        assert "service-wide" in assert_problem(promoted, 403)["detail"]
    reverted = client.post("/api/v1/training-defaults/1/revert", headers=alice)
    assert "service-wide" in assert_problem(reverted, 403)["detail"]
    assert client.post(f"{SWEEPS}/{alices}/promote", json={}, headers=service).status_code == 409


def test_pause_resume_and_cancel_follow_the_allowed_transitions(client: ApiClient) -> None:
    auth = client.key(WRITE)
    sweep_id = submit(client, auth)["id"]

    def act(action: str) -> Any:
        return client.post(f"{SWEEPS}/{sweep_id}/{action}", headers=auth)

    assert act("pause").json()["status"] == "paused"
    assert "is paused" in assert_problem(act("pause"), 409)["detail"]
    # It never started, so resuming takes it back to preparing.
    assert act("resume").json()["status"] == "preparing"
    assert "is preparing" in assert_problem(act("resume"), 409)["detail"]
    cancelled = act("cancel").json()
    assert cancelled["status"] == "cancelled"
    for action in ("cancel", "pause", "resume"):
        assert_problem(act(action), 409)
    statuses = [e["status"] for e in client.get(f"{SWEEPS}/{sweep_id}/events").json()["items"]]
    assert statuses == ["preparing", "paused", "preparing", "cancelled"]
    assert client.get(SWEEPS, params={"status": "cancelled"}).json()["total"] == 1
    assert_problem(client.post(f"{SWEEPS}/999999/pause", headers=auth), 404)
    assert_problem(client.get(f"{SWEEPS}/999999"), 404)


def test_the_budget_can_be_changed_within_the_grid(client: ApiClient) -> None:
    auth = client.key(WRITE)
    sweep_id = submit(client, auth)["id"]
    url = f"{SWEEPS}/{sweep_id}"
    changed = client.patch(
        url, json={"max_trials": 4, "max_parallel": 3, "wall_clock_seconds": 60}, headers=auth
    )
    assert changed.status_code == 200, changed.text
    budget = {"max_trials": 4, "max_parallel": 3, "wall_clock_seconds": 60.0}
    assert changed.json()["budget"] == budget
    assert client.get(url).json()["budget"] == budget
    too_big = assert_problem(client.patch(url, json={"max_trials": 7}, headers=auth), 422)
    assert too_big["errors"][0]["pointer"] == "/max_trials" and "6 points" in too_big["detail"]
    assert_problem(client.patch(url, json={"max_parallel": 0}, headers=auth), 422)
    assert_problem(client.patch(url, json={"max_trails": 3}, headers=auth), 422)
    assert client.get(url).json()["budget"] == budget
    events = client.get(f"{url}/events").json()["items"]
    assert events[-1]["detail"] == "budget max_trials=4, max_parallel=3, wall_clock_seconds=60.0"
    client.post(f"{url}/cancel", headers=auth)
    assert_problem(client.patch(url, json={"max_trials": 5}, headers=auth), 409)


# --- sweeps that run ----------------------------------------------------------------------------


@dataclass
class Live:
    """The API on a database whose commits are real, with a key that may do everything here."""

    client: TestClient
    auth: dict[str, str]

    def run(self, sweep_id: int) -> str:
        return run_sweep_inline(get_engine(), get_settings(), sweep_id)

    def trials(self, sweep_id: int) -> dict[tuple[float, float], dict[str, Any]]:
        items = self.client.get(f"{SWEEPS}/{sweep_id}/trials").json()["items"]
        return {(trial["params"]["w"], trial["params"]["w0"]): trial for trial in items}


def mint_key() -> dict[str, str]:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="sweeps", scopes=[WRITE, "runs:write"])
        session.commit()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def live(committed_database: str) -> Iterator[Live]:
    auth = mint_key()
    with TestClient(create_app()) as client:
        yield Live(client, auth)


@dataclass(frozen=True)
class Shared:
    environment: dict[str, str]
    sweep_id: int


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    """One 3×2 grid sweep over three seeds run to its end, for the tests that only read it
    (running it once per backend rather than once per test keeps these tests quick)."""
    environment = {"DATA_DIR": str(tmp_path_factory.mktemp("shared-sweep"))}
    admin = None
    if request.param == "postgres":
        environment["DATABASE_URL"], admin = create_database("licchavi_sweep")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        reset_caches()
        settings = get_settings()
        settings.ensure_data_dir()
        migrate(settings.resolved_database_url)
        with TestClient(create_app()) as client:
            sweep_id = int(submit(client, mint_key())["id"])
        assert run_sweep_inline(get_engine(), settings, sweep_id) == "completed"
        reset_caches()
    yield Shared(environment, sweep_id)
    reset_caches()
    if admin is not None:
        drop_database(environment["DATABASE_URL"], admin)


@pytest.fixture
def done(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Live, int]]:
    """The API on the shared finished sweep's database, and that sweep's id."""
    for name, value in shared.environment.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    auth = mint_key()
    with TestClient(create_app()) as client:
        yield Live(client, auth), shared.sweep_id
    reset_caches()


def queued_count(sweep_id: int) -> int:
    table = SweepEvaluation.__table__  # type: ignore[attr-defined]
    with get_engine().connect() as connection:
        return len(
            connection.execute(
                select(table.c.id).where(table.c.sweep_id == sweep_id, table.c.status == "queued")
            ).all()
        )


def test_a_running_sweep_pauses_resumes_and_winds_down_on_cancel(live: Live) -> None:
    client, auth = live.client, live.auth
    sweep_id = submit(client, auth)["id"]
    scheduler = SweepScheduler(get_engine(), get_settings(), owner="test", wake=lambda _id: None)

    def tick() -> dict[str, Any]:
        assert scheduler.tick()
        return dict(client.get(f"{SWEEPS}/{sweep_id}").json())

    prepared = tick()
    assert prepared["status"] == "running" and prepared["started_at"]
    assert prepared["data_fingerprint"] and prepared["split_fingerprint"]
    assert prepared["progress"]["trials"] == {}
    started = tick()
    # Two trials at a time (max_parallel), three seeds each.
    assert started["progress"]["trials"] == {"running": 2}
    assert started["progress"]["evaluations"] == {"queued": 6}
    assert client.post(f"{SWEEPS}/{sweep_id}/pause", headers=auth).json()["status"] == "paused"
    paused = tick()
    assert paused["progress"]["evaluations"] == {"pending": 6} and queued_count(sweep_id) == 0
    assert execution.claim_next(get_engine(), owner="nobody", lease_seconds=30) is None
    assert client.post(f"{SWEEPS}/{sweep_id}/resume", headers=auth).json()["status"] == "running"
    body = assert_problem(client.post(f"{SWEEPS}/{sweep_id}/resume", headers=auth), 409)
    assert "is running" in body["detail"]
    assert tick()["progress"]["evaluations"] == {"queued": 6}
    assert client.post(f"{SWEEPS}/{sweep_id}/cancel", headers=auth).json()["status"] == "cancelled"
    wound_down = tick()
    assert wound_down["status"] == "cancelled" and wound_down["finished_at"]
    assert wound_down["progress"]["evaluations"] == {"cancelled": 6}
    assert wound_down["progress"]["trials"] == {"cancelled": 2}


def test_a_grid_cut_short_by_its_budget_still_runs_the_baseline(live: Live) -> None:
    sweep_id = submit(live.client, live.auth, budget={"max_trials": 2})["id"]
    assert live.run(sweep_id) == "completed"
    items = live.client.get(f"{SWEEPS}/{sweep_id}/trials").json()["items"]
    assert [(trial["source"], trial["params"]) for trial in items] == [
        ("baseline", {"w": 1.0, "w0": 1.0}),
        ("grid", {"w": 0.5, "w0": 0.5}),
        ("grid", {"w": 0.5, "w0": 1.0}),
    ]
    board = live.client.get(f"{SWEEPS}/{sweep_id}/leaderboard").json()
    assert board["incumbent_id"] == items[0]["id"]
    paired = [row["vs_incumbent"] for row in board["items"] if row["trial_id"] != items[0]["id"]]
    assert [row["n_pairs"] for row in paired] == [3, 3]


def test_results_of_a_finished_sweep(done: tuple[Live, int]) -> None:
    live, finished = done
    client, base = live.client, f"{SWEEPS}/{finished}"
    sweep = client.get(base).json()
    assert sweep["status"] == "completed" and sweep["finished_at"]
    assert sweep["progress"]["trials"] == {"succeeded": 6}
    assert sweep["progress"]["evaluations"] == {"succeeded": 18}
    trials = live.trials(finished)
    best = max(trials.values(), key=lambda trial: trial["objective"])
    assert sweep["progress"]["best"]["trial_id"] == best["id"]

    # Filtering and sorting run in the database.
    page = client.get(
        f"{base}/trials",
        params={"filter": "params.w >= 1 AND status = succeeded", "sort": "-objective"},
    ).json()
    assert page["total"] == 4
    assert all(item["params"]["w"] >= 1 for item in page["items"])
    objectives = [item["objective"] for item in page["items"]]
    assert objectives == sorted(objectives, reverse=True) and len(set(objectives)) == 4
    for item in page["items"]:
        assert item["n_succeeded"] == 3 and -1 <= item["metrics"]["spearman"] <= 1
    bad = assert_problem(client.get(f"{base}/trials", params={"filter": "params.w >>= 1"}), 422)
    assert bad["errors"][0]["pointer"] == "/filter" and "at position 10" in bad["detail"]
    bad_sort = assert_problem(client.get(f"{base}/trials", params={"sort": "-colour"}), 422)
    assert bad_sort["errors"][0]["pointer"] == "/sort"

    # The leaderboard: the incumbent is the trial run with the base settings.
    board = client.get(f"{base}/leaderboard").json()
    incumbent = trials[(1.0, 1.0)]
    assert board["incumbent_id"] == incumbent["id"] and board["total"] == 6
    assert [row["rank"] for row in board["items"]] == [1, 2, 3, 4, 5, 6]
    lows = [row["ci_low"] for row in board["items"]]
    assert lows == sorted(lows, reverse=True)
    for row in board["items"]:
        assert row["n"] == 3 and row["ci_low"] <= row["mean"] <= row["ci_high"]
        if row["trial_id"] == incumbent["id"]:
            assert row["vs_incumbent"] is None
        else:
            assert row["vs_incumbent"]["n_pairs"] == 3
            assert row["vs_incumbent"]["incumbent_id"] == incumbent["id"]

    # Comparing two trials shows only what differs between them.
    pair = [trials[(0.5, 0.5)]["id"], trials[(2.0, 1.0)]["id"]]
    compared = client.get(f"{base}/compare", params={"trials": ",".join(map(str, pair))}).json()
    assert compared["differing"] == {
        "w": {str(pair[0]): 0.5, str(pair[1]): 2.0},
        "w0": {str(pair[0]): 0.5, str(pair[1]): 1.0},
    }
    assert set(compared["metrics"]) == {str(trial_id) for trial_id in pair}
    assert_problem(client.get(f"{base}/compare", params={"trials": f"{pair[0]},999999"}), 404)
    # Many unknown trials: the 404 names the first ten and counts the rest.
    unknown = ",".join(str(900_000 + i) for i in range(30))
    many = assert_problem(client.get(f"{base}/compare", params={"trials": unknown}), 404)
    assert many["detail"].endswith("900009 and 20 more not in sweep " + f"{finished}.")

    # The CSV has a row per trial with parameter and metric columns.
    exported = client.get(f"{base}/trials.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 6
    assert {"params.w", "params.w0", "metrics.spearman", "metrics.heldout_accuracy"} <= set(rows[0])
    by_id = {int(row["trial_id"]): row for row in rows}
    for trial in trials.values():
        row = by_id[trial["id"]]
        assert float(row["params.w"]) == trial["params"]["w"]
        assert float(row["objective"]) == pytest.approx(trial["objective"])
        assert float(row["metrics.spearman"]) == pytest.approx(trial["metrics"]["spearman"])


def test_a_trial_shows_its_evaluations_and_history(done: tuple[Live, int]) -> None:
    live, finished = done
    client, base = live.client, f"{SWEEPS}/{finished}"
    trial_id = live.trials(finished)[(2.0, 0.5)]["id"]
    detail = client.get(f"{base}/trials/{trial_id}").json()
    assert detail["config"]["w"] == 2.0 and detail["config"]["epochs"] == 20
    evaluations = detail["evaluations"]
    assert [(e["unit_index"], e["seed"], e["fold"]) for e in evaluations] == [
        (0, 0, 1),
        (1, 1, 1),
        (2, 2, 1),
    ]
    for evaluation in evaluations:
        assert evaluation["status"] == "succeeded" and evaluation["attempt"] == 1
        assert -1 <= evaluation["metrics"]["spearman"] <= 1
        epochs = evaluation["metrics"]["epochs"]
        assert epochs >= 1 and len(evaluation["history"]["loss"]) == epochs
        assert len(evaluation["data_fingerprint"]) == len(evaluation["split_fingerprint"]) == 64
        assert evaluation["code_version"] and len(evaluation["config_hash"]) == 64
        assert evaluation["worker"] == "inline-worker" and evaluation["error"] is None
    # Each seed generated its own data set.
    assert len({evaluation["data_fingerprint"] for evaluation in evaluations}) == 3
    history = [(event["evaluation_id"], event["status"]) for event in detail["status_history"]]
    for evaluation in evaluations:
        ours = [status for evaluation_id, status in history if evaluation_id == evaluation["id"]]
        assert ours == ["running", "succeeded"]
    # The trial ends after its evaluations (a promotion of it may add an event later).
    assert history.index((None, "succeeded")) == 2 * len(evaluations)
    assert_problem(client.get(f"{base}/trials/999999"), 404)

    events = client.get(f"{base}/events", params={"limit": 500}).json()
    statuses = [event["status"] for event in events["items"]]
    assert events["total"] == len(statuses)
    assert statuses[0] == "preparing"
    # (Promoting a trial of this sweep may add an event after its completion.)
    assert statuses.index("completed") > max(i for i, s in enumerate(statuses) if s == "succeeded")
    assert statuses.count("succeeded") == 18 + 6  # evaluations, then trials


def test_every_plot_comes_as_data_and_png(done: tuple[Live, int]) -> None:
    live, finished = done
    base = f"{SWEEPS}/{finished}/plots"
    for name in ("loss-curves", "metric-vs-parameter", "parallel-coordinates", "importances"):
        data = live.client.get(f"{base}/{name}.json")
        assert data.status_code == 200, (name, data.text)
        assert isinstance(data.json(), dict) and data.json()
        image = live.client.get(f"{base}/{name}.png")
        assert image.status_code == 200, (name, image.text)
        assert image.headers["content-type"] == "image/png"
        assert image.content.startswith(PNG_MAGIC) and len(image.content) > 1000
    assert_problem(live.client.get(f"{base}/scatter.json"), 404)


def test_a_promoted_trial_sets_the_settings_of_new_training_runs(done: tuple[Live, int]) -> None:
    live, finished = done
    client, auth = live.client, live.auth
    strong_w = live.trials(finished)[(2.0, 1.0)]
    promoted = client.post(
        f"{SWEEPS}/{finished}/promote",
        json={"trial_id": strong_w["id"], "note": "w=2"},
        headers=auth,
    )
    assert promoted.status_code == 201, promoted.text
    defaults = promoted.json()
    assert defaults["active"] is True and defaults["trial_id"] == strong_w["id"]
    assert defaults["config"]["w"] == 2.0 and defaults["config"]["device"] == "auto"

    run = client.post(RUNS, json={}, headers=auth).json()
    assert run["config"]["w"] == 2.0 and run["config"]["epochs"] == 20
    # Explicit settings of a run still win over the promoted ones.
    assert client.post(RUNS, json={"config": {"w": 3}}, headers=auth).json()["config"]["w"] == 3.0
    # A sweep's base is laid over them too, so its incumbent is what production trains with.
    plan = client.post(
        SWEEPS,
        params={"dry_run": "true"},
        json={**grid_spec(parameters={"w0": {"values": [0.5, 2.0]}}), "base": {"epochs": 10}},
        headers=auth,
    ).json()
    assert (plan["spec"]["base"]["w"], plan["spec"]["base"]["epochs"]) == (2.0, 10)
    listed = client.get(DEFAULTS).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == defaults["id"]
    assert listed["items"][0]["active"] is True

    reverted = client.post(f"{DEFAULTS}/{defaults['id']}/revert", headers=auth)
    assert reverted.status_code == 200, reverted.text
    assert reverted.json()["active"] is False and reverted.json()["reverted_at"]
    assert client.get(DEFAULTS).json()["items"][0]["active"] is False
    assert_problem(client.post(f"{DEFAULTS}/{defaults['id']}/revert", headers=auth), 409)
    back = client.post(RUNS, json={}, headers=auth).json()
    assert back["config"]["w"] == 1.0 and back["config"]["epochs"] == 60

    # Without a trial id, the best trial by the objective is promoted.
    best = max(live.trials(finished).values(), key=lambda trial: trial["objective"])
    chosen = client.post(f"{SWEEPS}/{finished}/promote", json={}, headers=auth).json()
    assert chosen["trial_id"] == best["id"]
    assert_problem(
        client.post(f"{SWEEPS}/{finished}/promote", json={"trial_id": 999999}, headers=auth), 404
    )


def test_a_rerun_with_overrides_runs_as_a_child_trial(live: Live) -> None:
    client, auth = live.client, live.auth
    # Two configurations over two seeds are enough here.
    parameters = {"w": {"values": [0.5, 1.0]}, "w0": {"values": [1.0]}}
    # The faithful solver trains the epochs it is given, so the override shows in the metrics.
    faithful = {"epochs": 20, "compute_uncertainty": False, "solver": "faithful"}
    finished = submit(
        client, auth, parameters=parameters, repeats={"seeds": [0, 1]}, base=faithful
    )["id"]
    assert live.run(finished) == "completed"
    base = f"{SWEEPS}/{finished}"
    retried = client.post(f"{base}/retry-failed", headers=auth)
    assert retried.status_code == 200 and retried.json() == {"retried_evaluations": 0}
    assert client.get(base).json()["status"] == "completed"

    parent = live.trials(finished)[(0.5, 1.0)]
    invalid = assert_problem(
        client.post(
            f"{base}/trials/{parent['id']}/rerun", json={"overrides": {"speed": 1}}, headers=auth
        ),
        422,
    )
    assert invalid["errors"][0]["pointer"] == "/overrides/speed"
    assert_problem(
        client.post(f"{base}/trials/999999/rerun", json={"overrides": {}}, headers=auth), 404
    )
    # CPU workers leave a CUDA evaluation queued: with no GPU worker the sweep would never end.
    cuda = client.post(
        f"{base}/trials/{parent['id']}/rerun", json={"overrides": {"device": "cuda"}}, headers=auth
    )
    assert "gpu queue" in assert_problem(cuda, 409)["detail"]
    assert client.get(base).json()["status"] == "completed"
    response = client.post(
        f"{base}/trials/{parent['id']}/rerun", json={"overrides": {"epochs": 5}}, headers=auth
    )
    assert response.status_code == 202, response.text
    child = response.json()
    assert (child["parent_id"], child["overrides"], child["source"]) == (
        parent["id"],
        {"epochs": 5},
        "rerun",
    )
    assert child["params"] == {"w": 0.5, "w0": 1.0, "epochs": 5} and "rerun" in child["tags"]
    assert client.get(base).json()["status"] == "running"

    assert live.run(finished) == "completed"
    detail = client.get(f"{base}/trials/{child['id']}").json()
    assert detail["status"] == "succeeded" and detail["metrics"]["epochs"] == 5
    assert detail["config"]["epochs"] == 5 and detail["config"]["w"] == 0.5
    assert [evaluation["seed"] for evaluation in detail["evaluations"]] == [0, 1]
    for evaluation in detail["evaluations"]:
        assert evaluation["metrics"]["epochs"] == 5 and len(evaluation["history"]["loss"]) == 5
    rerun_only = client.get(f"{base}/trials", params={"filter": "source = rerun"}).json()
    assert [trial["id"] for trial in rerun_only["items"]] == [child["id"]]


def test_without_the_sweeps_extra_a_submission_is_503_and_readyz_says_so(
    client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = client.key(WRITE)
    assert client.get("/readyz").json()["checks"]["sweeps"] == "ok"
    # The extra's modules cannot be imported: as where it was never installed.
    monkeypatch.setitem(sys.modules, "optuna", None)
    for dry_run in ("true", "false"):
        response = client.post(SWEEPS, json=grid_spec(), headers=auth, params={"dry_run": dry_run})
        body = assert_problem(response, 503)
        assert "licchavi[sweeps]" in body["detail"] and "optuna" in body["detail"]
    assert client.get(SWEEPS).json()["total"] == 0
    ready = client.get("/readyz")
    # Everything else still works, so the service stays ready and names what it cannot do.
    assert ready.status_code == 200 and ready.json()["checks"]["sweeps"] == "unavailable"
    assert "optuna" in ready.json()["unavailable"]["sweeps"]
