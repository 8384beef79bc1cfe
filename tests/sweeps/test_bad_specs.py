"""A corpus of bad sweep specs, budget changes and run settings, on PostgreSQL and SQLite: each
is refused at once with a 4xx problem that points at the field, and nothing stored changes."""

import json
import tracemalloc
from typing import Any

import pytest

from app.models import Sweep, SweepEvaluation, SweepTrial
from bench.spec_limits import BILLION_LAUGHS
from ml.sweep.spec import MAX_SPEC_BYTES
from tests.comparisons.test_comparisons import assert_problem
from tests.conftest import ApiClient
from tests.sweeps_support import grid_spec

SWEEPS = "/api/v1/sweeps"
RUNS = "/api/v1/training-runs"
WRITE = ("sweeps:write", "runs:write")
JSON = "application/json"
YAML = "application/yaml"

# The report's 683-byte shape: anchors reused under values.
ANCHORED_VALUES = "name: x\nv: &v [0.5, 1.0]\nparameters:\n  w: {values: *v}\n"
MERGE_KEY = "name: x\nbase_defaults: &d {epochs: 5}\nbase:\n  <<: *d\n"
DEEP_YAML = "name: x\nparameters:\n  w:\n    values: " + "[" * 5000 + "]" * 5000 + "\n"
MANY_NODES = "name: x\ntags: [" + ",".join(["t"] * 30_000) + "]\n"
HUGE_INTEGER = "name: x\nsampler_seed: " + "9" * 5000 + "\n"
NESTED_VALUE: Any = 0.5
for _ in range(100):
    NESTED_VALUE = [NESTED_VALUE]


def spec(**overrides: Any) -> str:
    return json.dumps(grid_spec(**overrides))


def params(**parameters: Any) -> str:
    return spec(parameters=parameters)


# (body, media type, the pointer of the first error; None for a body refused as a whole)
SPECS = [
    pytest.param(BILLION_LAUGHS, YAML, "/", id="yaml-billion-laughs"),
    pytest.param(ANCHORED_VALUES, YAML, "/", id="yaml-anchored-values"),
    pytest.param(MERGE_KEY, YAML, "/", id="yaml-merge-key-alias"),
    pytest.param(DEEP_YAML, YAML, "/", id="yaml-5000-deep"),
    pytest.param(MANY_NODES, YAML, "/", id="yaml-30000-nodes"),
    pytest.param(HUGE_INTEGER, YAML, "/", id="yaml-5000-digit-integer"),
    pytest.param("name: x\nbase: {w: .inf}\n", YAML, "/base/w", id="yaml-base-inf"),
    pytest.param(
        '{"name": "x", "base": ' + "[" * 100_000 + "]" * 100_000 + "}",
        JSON,
        "/",
        id="json-100000-deep",
    ),
    pytest.param("name: x\nbase: {w0: .nan}\n", YAML, "/base/w0", id="yaml-base-nan"),
    pytest.param(
        "name: x\nmethod: random\nparameters: {w: {low: -.inf, high: 1}}\n",
        YAML,
        "/parameters/w/low",
        id="yaml-low-minus-inf",
    ),
    pytest.param('{"name": "x", "base": {"w": 1e309}}', JSON, "/base/w", id="base-1e309"),
    pytest.param('{"name": "x", "base": {"w": NaN}}', JSON, "/base/w", id="base-nan"),
    pytest.param('{"name": "x", "base": {"lr_s": -Infinity}}', JSON, "/base/lr_s", id="-inf"),
    pytest.param(spec(base={"epochs": 10**12}), JSON, "/base/epochs", id="base-epochs-huge"),
    pytest.param(spec(base={"seed": 2**40}), JSON, "/base/seed", id="base-seed-huge"),
    pytest.param(params(w={"values": ["x"]}), JSON, "/parameters/w/values/0", id="w-is-text"),
    pytest.param(
        params(w={"values": [0.5, NESTED_VALUE]}),
        JSON,
        "/parameters/w/values/1",
        id="w-100-deep-list",
    ),
    pytest.param(
        params(epochs={"values": [5, 10**20]}), JSON, "/parameters/epochs/values/1", id="epochs"
    ),
    pytest.param(
        params(w={"low": 1, "high": 3e7, "step": 1}), JSON, "/parameters/w/high", id="range-3e7"
    ),
    pytest.param(
        params(w={"low": 1e-6, "high": 1e6, "step": 1e-6}),
        JSON,
        "/parameters",
        id="range-of-1e12-points",
    ),
    pytest.param(
        params(w={"low": 1e-300, "high": 1e6, "step": 5e-324}),
        JSON,
        "/parameters/w",
        id="range-of-infinite-points",
    ),
    pytest.param(
        params(
            epochs={"low": 1, "high": 100_000, "step": 1, "type": "int"},
            w={"values": [0.5, 1.0]},
        ),
        JSON,
        "/parameters",
        id="grid-of-200000-points",
    ),
    pytest.param(
        params(w={"values": list(range(1, 100_001))}), JSON, "/parameters/w/values", id="1e5-vals"
    ),
    pytest.param(
        params(compute_uncertainty={"low": 0, "high": 1, "step": 1}),
        JSON,
        "/parameters/compute_uncertainty",
        id="range-over-a-switch",
    ),
    pytest.param(
        params(epochs={"low": 1, "high": 9, "step": 2}),
        JSON,
        "/parameters/epochs",
        id="float-range-over-epochs",
    ),
    pytest.param(
        params(**{f"p{i}": {"values": [1]} for i in range(10_000)}),
        JSON,
        "/parameters",
        id="10000-parameters",
    ),
    pytest.param(params(w={"values": "abc"}), JSON, "/parameters/w/values", id="values-text"),
    pytest.param(spec(tags=["ok", "a\x00b"]), JSON, "/tags", id="nul-in-tag"),
    pytest.param(spec(tags=["t"] * 100_000), JSON, "/tags", id="100000-tags"),
    pytest.param(
        params(
            **{name: {"values": list(range(1, 1001))} for name in ("epochs", "gen_freq", "seed")}
        ),
        JSON,
        "/parameters",
        id="3000-values-in-all",
    ),
    pytest.param(spec(name="a\x00b"), JSON, "/name", id="nul-in-name"),
    pytest.param(spec(name="n" * 600_000), JSON, "/name", id="600kB-name"),
    pytest.param(spec(criterion="a\x00b"), JSON, "/criterion", id="nul-in-criterion"),
    pytest.param(spec(name=5), JSON, "/name", id="name-is-a-number"),
    pytest.param(spec(parameters=[]), JSON, "/parameters", id="parameters-is-a-list"),
    pytest.param(spec(budget="x"), JSON, "/budget", id="budget-is-text"),
    pytest.param(
        spec(budget={"wall_clock_seconds": 1e14}),
        JSON,
        "/budget/wall_clock_seconds",
        id="wall-clock-1e14",
    ),
    pytest.param(
        '{"name": "x", "budget": {"wall_clock_seconds": 1e309}}',
        JSON,
        "/budget/wall_clock_seconds",
        id="wall-clock-1e309",
    ),
    pytest.param(
        spec(budget={"max_parallel": 10**9}), JSON, "/budget/max_parallel", id="max-parallel"
    ),
    pytest.param(spec(budget={"max_trials": 10**12}), JSON, "/budget/max_trials", id="trials"),
    pytest.param(spec(repeats={"seeds": [10**20]}), JSON, "/repeats/seeds/0", id="seed-1e20"),
    pytest.param(
        spec(repeats={"seeds": list(range(1000))}), JSON, "/repeats/seeds", id="1000-seeds"
    ),
    pytest.param(spec(sampler_seed=2**40), JSON, "/sampler_seed", id="sampler-seed"),
    pytest.param(
        spec(objectives=[{"metric": "m" * 100_000, "direction": "maximize"}]),
        JSON,
        "/objectives/0/metric",
        id="huge-metric",
    ),
    pytest.param(
        spec(evaluation={"kind": "synthetic", "generator": {"n_users": 10**9}}),
        JSON,
        "/evaluation/generator",
        id="a-billion-users",
    ),
    pytest.param(
        '{"name": "x", "evaluation": {"kind": "synthetic", "generator": '
        '{"comps_per_video": 1e309}}}',
        JSON,
        "/evaluation/generator/comps_per_video",
        id="generator-1e309",
    ),
    pytest.param(
        spec(evaluation={"kind": "synthetic", "generator": {"criteria": ["a\x00b"]}}),
        JSON,
        "/evaluation/generator",
        id="generator-nul-criterion",
    ),
]


def refused_at(response: Any, pointer: str) -> None:
    """A 422 problem whose first error points at `pointer`, with a short one-line detail."""
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["pointer"] == pointer, problem
    assert "\n" not in problem["detail"] and len(problem["detail"]) < 1000


def listing(client: ApiClient) -> Any:
    return client.get(SWEEPS, params={"limit": 100}).json()


@pytest.fixture
def existing(client: ApiClient) -> tuple[dict[str, str], Any]:
    """A key, and the listing with one good sweep already stored."""
    auth = client.key(*WRITE)
    response = client.post(SWEEPS, json=grid_spec(name="kept"), headers=auth)
    assert response.status_code == 202, response.text
    return auth, listing(client)


@pytest.mark.parametrize(("body", "media_type", "pointer"), SPECS)
def test_a_bad_spec_is_refused_with_a_pointer_and_stores_nothing(
    client: ApiClient,
    existing: tuple[dict[str, str], Any],
    body: str,
    media_type: str,
    pointer: str,
) -> None:
    auth, before = existing
    headers = {**auth, "Content-Type": media_type}
    for dry_run in ("true", "false"):
        response = client.post(
            SWEEPS, content=body.encode(), headers=headers, params={"dry_run": dry_run}
        )
        refused_at(response, pointer)
    assert listing(client) == before


def test_a_spec_over_the_size_cap_is_413(
    client: ApiClient, existing: tuple[dict[str, str], Any]
) -> None:
    auth, before = existing
    body = spec(name="x", tags=["t" * 60] * ((MAX_SPEC_BYTES // 60) + 10))
    problem = assert_problem(
        client.post(SWEEPS, content=body.encode(), headers={**auth, "Content-Type": JSON}), 413
    )
    assert str(MAX_SPEC_BYTES) in problem["detail"]
    assert listing(client) == before


# A megabyte each, shaped to cost the most once read: expanded aliases, one node per two bytes,
# nesting as deep as the bytes allow, and a range of a trillion points.
MEGABYTE = MAX_SPEC_BYTES - 1000
ADVERSARIAL = [
    pytest.param(
        BILLION_LAUGHS + "\n#" + "x" * (MEGABYTE - len(BILLION_LAUGHS)) + "\n",
        YAML,
        id="billion-laughs",
    ),
    pytest.param("name: x\ntags: [" + "t," * (MEGABYTE // 2) + "t]\n", YAML, id="flat-list"),
    pytest.param(
        "name: x\nbase: " + "[" * (MEGABYTE // 2) + "]" * (MEGABYTE // 2) + "\n",
        YAML,
        id="deep",
    ),
    # Valid but for the range, padded with whitespace: the range alone decides.
    pytest.param(
        params(w={"low": 1e-6, "high": 1e6, "step": 1e-6}) + " " * MEGABYTE,
        JSON,
        id="trillion-point-range",
    ),
    pytest.param(
        params(
            epochs={"low": 1, "high": 100_000, "step": 1, "type": "int"},
            w={"low": 1e-6, "high": 1e6, "step": 1e-6},
        )
        + " " * MEGABYTE,
        JSON,
        id="grid-of-ranges",
    ),
    pytest.param(
        json.dumps({"name": "x", "parameters": {"w": {"values": [0.5] * (MEGABYTE // 5)}}}),
        JSON,
        id="values-list",
    ),
]


@pytest.mark.parametrize(("body", "media_type"), ADVERSARIAL)
def test_a_megabyte_spec_is_refused_in_bounded_memory(
    client: ApiClient, body: str, media_type: str
) -> None:
    auth = client.key(*WRITE)
    content = body.encode()
    assert MAX_SPEC_BYTES - 2000 < len(content) <= MAX_SPEC_BYTES
    tracemalloc.start()
    try:
        response = client.post(
            SWEEPS,
            content=content,
            headers={**auth, "Content-Type": media_type},
            params={"dry_run": "true"},
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_problem(response, 422)
    # Nothing the spec describes was built: what was read costs a small multiple of its size.
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# --- budget changes -----------------------------------------------------------------------------

PATCHES = [
    pytest.param('{"wall_clock_seconds": 1e14}', "/wall_clock_seconds", id="wall-clock-1e14"),
    pytest.param('{"wall_clock_seconds": 1e309}', "/wall_clock_seconds", id="wall-clock-1e309"),
    pytest.param('{"wall_clock_seconds": NaN}', "/wall_clock_seconds", id="wall-clock-nan"),
    pytest.param('{"wall_clock_seconds": -1}', "/wall_clock_seconds", id="wall-clock-negative"),
    pytest.param('{"wall_clock_seconds": "soon"}', "/wall_clock_seconds", id="wall-clock-text"),
    pytest.param('{"max_trials": 1000000000000}', "/max_trials", id="max-trials-huge"),
    pytest.param('{"max_parallel": 1000000}', "/max_parallel", id="max-parallel-huge"),
    pytest.param('{"max_parallel": 1e309}', "/max_parallel", id="max-parallel-inf"),
]


@pytest.mark.parametrize(("body", "pointer"), PATCHES)
def test_a_bad_budget_change_is_refused_and_changes_nothing(
    client: ApiClient, existing: tuple[dict[str, str], Any], body: str, pointer: str
) -> None:
    auth, before = existing
    sweep_id = before["items"][0]["id"]
    response = client.patch(
        f"{SWEEPS}/{sweep_id}", content=body.encode(), headers={**auth, "Content-Type": JSON}
    )
    refused_at(response, pointer)
    assert listing(client) == before


def test_a_year_of_wall_clock_is_accepted(
    client: ApiClient, existing: tuple[dict[str, str], Any]
) -> None:
    auth, before = existing
    sweep_id = before["items"][0]["id"]
    year = 365 * 24 * 3600
    changed = client.patch(f"{SWEEPS}/{sweep_id}", json={"wall_clock_seconds": year}, headers=auth)
    assert changed.status_code == 200, changed.text
    assert changed.json()["budget"]["wall_clock_seconds"] == year


# --- training run settings ----------------------------------------------------------------------

RUN_CONFIGS = [
    pytest.param('{"config": {"w": 1e309}}', "/config/w", id="w-1e309"),
    pytest.param('{"config": {"w": NaN}}', "/config/w", id="w-nan"),
    pytest.param('{"config": {"lr_gen": -Infinity}}', "/config/lr_gen", id="lr-gen-minus-inf"),
    pytest.param('{"config": {"epochs": 1000000000000}}', "/config/epochs", id="epochs-huge"),
    pytest.param('{"config": {"max_iterations": 1e300}}', "/config/max_iterations", id="iters"),
    pytest.param('{"config": {"seed": 1099511627776}}', "/config/seed", id="seed-2-40"),
    pytest.param('{"config": {"tolerance": 5}}', "/config/tolerance", id="tolerance-over-1"),
    pytest.param('{"config": {"w": "x"}}', "/config/w", id="w-text"),
    pytest.param(json.dumps({"config": {"w": NESTED_VALUE}}), "/config/w", id="w-100-deep-list"),
    pytest.param(
        json.dumps({"config": {"solver": "s" * 500_000}}), "/config/solver", id="huge-string"
    ),
]


@pytest.mark.parametrize(("body", "pointer"), RUN_CONFIGS)
def test_bad_run_settings_are_refused_and_store_nothing(
    client: ApiClient, body: str, pointer: str
) -> None:
    auth = client.key(*WRITE)
    response = client.post(RUNS, content=body.encode(), headers={**auth, "Content-Type": JSON})
    refused_at(response, pointer)
    assert client.get(RUNS).json()["total"] == 0


# --- the best trial -----------------------------------------------------------------------------


def test_progress_best_and_promote_follow_the_leaderboard(
    client: ApiClient, existing: tuple[dict[str, str], Any]
) -> None:
    """A lucky trial (one high seed, one low: the highest mean) loses to a steady one on the
    leaderboard, which ranks by the interval's pessimistic end; progress.best and promote {}
    must name the leaderboard's winner."""
    auth, before = existing
    sweep_id = before["items"][0]["id"]
    spec_values = before["items"][0]["spec"]
    with client._session_factory() as session:  # type: ignore[attr-defined]
        sweep = session.get(Sweep, sweep_id)
        sweep.status = "running"
        session.add(sweep)
        trials = {}
        for number, (name, w, scores) in enumerate(
            [("lucky", 0.5, [0.95, 0.05]), ("steady", 2.0, [0.45, 0.45])]
        ):
            config = {**spec_values["base"], "w": w}
            trial = SweepTrial(
                sweep_id=sweep_id,
                number=number,
                status="succeeded",
                source="grid",
                params={"w": w},
                config=config,
                config_hash=name,
                metrics={"spearman": sum(scores) / len(scores)},
                objective=sum(scores) / len(scores),
                n_succeeded=len(scores),
            )
            session.add(trial)
            session.flush()
            trials[name] = trial.id
            for unit_index, score in enumerate(scores):
                session.add(
                    SweepEvaluation(
                        sweep_id=sweep_id,
                        trial_id=trial.id,
                        unit_index=unit_index,
                        seed=unit_index,
                        fold=1,
                        status="succeeded",
                        metrics={"spearman": score},
                    )
                )
        session.commit()

    board = client.get(f"{SWEEPS}/{sweep_id}/leaderboard").json()
    assert [item["trial_id"] for item in board["items"]] == [trials["steady"], trials["lucky"]]
    best = client.get(f"{SWEEPS}/{sweep_id}").json()["progress"]["best"]
    assert best["trial_id"] == trials["steady"]
    promoted = client.post(f"{SWEEPS}/{sweep_id}/promote", json={}, headers=auth)
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["trial_id"] == trials["steady"]
