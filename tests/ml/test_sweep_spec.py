"""Sweep specs: resolved defaults, grid expansion, errors that name the field, units, hashing."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml.config import LicchaviConfig
from ml.sweep.spec import SpecError, load_spec, parse_spec, spec_hash
from ml.synthetic import SyntheticParams
from tests.sweeps_support import grid_spec


def spec_error(content: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(content)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_minimal_spec_resolves_every_default() -> None:
    resolved = parse_spec({"name": "defaults"}).resolved()
    assert resolved["base"] == LicchaviConfig().model_dump(mode="json")
    assert resolved["method"] == "grid" and resolved["criterion"] == "largely_recommended"
    assert resolved["objectives"] == [{"metric": "heldout_accuracy", "direction": "maximize"}]
    assert resolved["evaluation"] == {
        "kind": "holdout",
        "folds": 5,
        "split_by": "comparison",
        "split_seed": 0,
    }
    assert resolved["repeats"] == {"seeds": [0]}
    # A grid without parameters is the one point of the base settings.
    assert resolved["budget"] == {"max_trials": 1, "max_parallel": 2, "wall_clock_seconds": None}
    assert resolved["early_stopping"]["pruner"] == "none"
    assert (resolved["include_baseline"], resolved["sampler_seed"], resolved["tags"]) == (
        True,
        0,
        [],
    )


def test_base_and_generator_are_written_out_in_full() -> None:
    spec = parse_spec(grid_spec())
    resolved = spec.resolved()
    expected_base = LicchaviConfig(epochs=20, compute_uncertainty=False).model_dump(mode="json")
    assert resolved["base"] == expected_base
    generator = resolved["evaluation"]["generator"]
    assert generator == SyntheticParams(n_users=20, n_videos=60, comps_per_video=3).model_dump(
        mode="json", exclude={"seed"}
    )
    assert generator["indiv_noise"] == 0.3 and generator["criteria"] == ["largely_recommended"]
    assert resolved["evaluation"]["heldout_fraction"] == 0.1
    # The resolved spec reads back as itself.
    assert parse_spec(resolved).resolved() == resolved


def test_a_sampler_without_max_trials_gets_twenty() -> None:
    spec = parse_spec(
        {"name": "r", "method": "random", "parameters": {"w": {"low": 0.1, "high": 3}}}
    )
    assert spec.budget.max_trials == 20


def test_grid_lists_every_point_in_name_order() -> None:
    spec = parse_spec(grid_spec())
    assert spec.grid_size() == 6 and spec.budget.max_trials == 6
    assert spec.grid() == [
        {"w": 0.5, "w0": 0.5},
        {"w": 0.5, "w0": 1.0},
        {"w": 1.0, "w0": 0.5},
        {"w": 1.0, "w0": 1.0},
        {"w": 2.0, "w0": 0.5},
        {"w": 2.0, "w0": 1.0},
    ]


def test_grid_over_ranges_with_a_step() -> None:
    spec = parse_spec(
        {
            "name": "ranges",
            "parameters": {
                "lr_gen": {"low": 0.1, "high": 0.5, "step": 0.1},
                "epochs": {"low": 10, "high": 40, "step": 15, "type": "int"},
                "solver": {"choices": ["faithful", "converged"]},
            },
        }
    )
    lr_gen = spec.parameters["lr_gen"].grid_values()
    # 0.1 + 2·0.1 is 0.30000000000000004 in floating point; the grid says 0.3.
    assert lr_gen == [0.1, 0.2, 0.3, 0.4, 0.5]
    epochs = spec.parameters["epochs"].grid_values()
    assert epochs == [10, 25, 40] and all(isinstance(value, int) for value in epochs)
    assert spec.grid_size() == 5 * 3 * 2 == len(spec.grid()) == spec.budget.max_trials
    assert spec.grid()[:2] == [
        {"epochs": 10, "lr_gen": 0.1, "solver": "faithful"},
        {"epochs": 10, "lr_gen": 0.1, "solver": "converged"},
    ]
    # A step that does not divide the range stops at the last point inside it.
    uneven = parse_spec({"name": "u", "parameters": {"w": {"low": 1, "high": 2, "step": 0.4}}})
    assert uneven.parameters["w"].grid_values() == [1.0, 1.4, 1.8]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"parameters": {"speed": {"values": [1]}}}, "parameters.speed: not a training setting"),
        ({"parameters": {"device": {"values": ["cpu"]}}}, "parameters.device: not a training"),
        (
            {"parameters": {"w": {"low": 0.1, "high": 2}}},
            "parameters.w: a grid over a range needs a step",
        ),
        (
            {"method": "cmaes", "parameters": {"solver": {"choices": ["faithful", "converged"]}}},
            "parameters.solver: cmaes samples ranges only",
        ),
        (
            {"objectives": [{"metric": "spearman", "direction": "maximize"}]},
            "objectives: 'spearman' is not recorded by a holdout evaluation",
        ),
        ({"repeats": {"seeds": [1, 2, 1]}}, "repeats.seeds: seeds must be distinct"),
        ({"parameters": {"w": {"values": [1, 2, 1.0]}}}, "parameters.w: 1.0 is listed twice"),
        (
            {"method": "random", "parameters": {"solver": {"choices": ["faithful", "faithful"]}}},
            "parameters.solver: 'faithful' is listed twice",
        ),
        (
            {"evaluation": {"kind": "synthetic", "generator": {"seed": 4}}},
            "evaluation.generator: the generator's seed comes from repeats.seeds",
        ),
        ({"evaluation": {"kind": "holdout", "folds": 1}}, "evaluation.folds: "),
        (
            {"parameters": {"epochs": {"low": 10, "high": 20, "step": 2.5, "type": "int"}}},
            "parameters.epochs: an int range needs whole numbers",
        ),
        (
            {
                "method": "random",
                "parameters": {"epochs": {"low": 1.5, "high": 20, "type": "int"}},
            },
            "parameters.epochs: an int range needs whole numbers",
        ),
        ({"parameters": {"w": {"low": 2, "high": 1}}}, "parameters.w: high must not be below"),
        ({"tags": ["fast", "a,b"]}, "tags: tag 'a,b': 1 to 64 characters, no comma"),
        ({"tags": [""]}, "tags: tag '': "),
        ({"budget": {"max_parallel": 0}}, "budget.max_parallel: "),
        ({"base": {"w": -1}}, "base.w: "),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"method": "tpe"}, "method: a sampler needs at least one parameter"),
    ],
)
def test_invalid_specs_name_the_field(content: dict[str, Any], expected: str) -> None:
    assert spec_error({"name": "bad", **content}).startswith(expected)


def test_units_of_holdout_and_synthetic_evaluations() -> None:
    holdout = parse_spec(
        {"name": "h", "repeats": {"seeds": [3, 1]}, "evaluation": {"kind": "holdout", "folds": 3}}
    )
    assert holdout.units() == [(3, 0), (3, 1), (3, 2), (1, 0), (1, 1), (1, 2)]
    assert holdout.units_per_trial == 6
    synthetic = parse_spec(grid_spec(repeats={"seeds": [4, 7]}))
    # Synthetic data holds its test comparisons out as fold 1 of each seed's dataset.
    assert synthetic.units() == [(4, 1), (7, 1)] and synthetic.units_per_trial == 2


def test_trial_config_layers_base_then_params_then_seed() -> None:
    spec = parse_spec(grid_spec())
    config = spec.trial_config({"w": 2.0}, seed=7)
    assert (config.w, config.w0, config.epochs, config.seed) == (2.0, 1.0, 20, 7)


def test_spec_hash_is_stable_and_sensitive() -> None:
    reference = spec_hash(parse_spec(grid_spec()))
    assert len(reference) == 64
    assert spec_hash(parse_spec(grid_spec())) == reference
    # Writing a default out, or keys in another order, is the same spec.
    explicit = grid_spec(method="grid", budget={"max_parallel": 2}, include_baseline=True)
    assert spec_hash(parse_spec(dict(reversed(list(explicit.items()))))) == reference
    changed = [
        grid_spec(repeats={"seeds": [0, 1, 3]}),
        grid_spec(base={"epochs": 21, "compute_uncertainty": False}),
        grid_spec(name="another"),
        grid_spec(parameters={"w": {"values": [0.5, 1.0, 3.0]}, "w0": {"values": [0.5, 1.0]}}),
    ]
    hashes = {spec_hash(parse_spec(content)) for content in changed}
    assert len(hashes) == len(changed) and reference not in hashes


def test_load_spec_reads_yaml_and_json_alike(tmp_path: Path) -> None:
    content = grid_spec()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(content))
    (tmp_path / "spec.json").write_text(json.dumps(content))
    from_yaml, from_json = load_spec(tmp_path / "spec.yaml"), load_spec(tmp_path / "spec.json")
    assert from_yaml.resolved() == from_json.resolved() == parse_spec(content).resolved()


def test_load_spec_errors_are_one_line(tmp_path: Path) -> None:
    def error(path: Path) -> str:
        with pytest.raises(SpecError) as caught:
            load_spec(path)
        message = str(caught.value)
        assert "\n" not in message
        return message

    missing = tmp_path / "missing.yaml"
    assert error(missing) == f"{missing}: No such file or directory"
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("name: [unclosed\nmethod: grid\n")
    assert error(broken_yaml).startswith(f"{broken_yaml}: cannot parse (")
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"name": "x",}')
    assert error(broken_json).startswith(f"{broken_json}: cannot parse (")
    listing = tmp_path / "list.yaml"
    listing.write_text("- name: x\n")
    assert error(listing) == f"{listing}: expected a mapping"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert error(empty) == f"{empty}: expected a mapping"
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("name: x\nrepeats: {seeds: [2, 2]}\n")
    assert error(invalid) == "repeats.seeds: seeds must be distinct"
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\nparameters: {w: {values: [1]}}\nname: y\n")
    assert error(twice) == f"{twice}: cannot parse (key 'name' given twice (line 3))"
    twice_json = tmp_path / "twice.json"
    twice_json.write_text('{"name": "x", "name": "y"}')
    assert error(twice_json) == f"{twice_json}: cannot parse (key 'name' given twice)"


def test_values_are_checked_and_stored_as_the_setting_reads_them() -> None:
    # YAML 1.1 reads 1e-3 as text; the setting reads it as a number, and so is it stored.
    spec = load_yaml_spec(
        "name: x\nparameters:\n  w: {values: [1e-3, 2]}\n  epochs: {values: [5.0]}"
    )
    assert spec.parameters["w"].values == [0.001, 2.0]
    assert spec.parameters["epochs"].values == [5] and isinstance(spec.grid()[0]["epochs"], int)
    for content, expected in [
        ({"w": {"values": ["x"]}}, "parameters.w.values.0: Input should be a valid number"),
        ({"w": {"values": [0]}}, "parameters.w.values.0: Input should be greater than 0"),
        ({"solver": {"choices": ["adam"]}}, "parameters.solver.choices.0: Input should be"),
        ({"w": {"low": 1, "high": 1e7, "step": 1}}, "parameters.w.high: Input should be less"),
        ({"epochs": {"low": 1, "high": 9, "step": 2}}, "parameters.epochs: a whole-number"),
        ({"optimise_s": {"low": 0, "high": 1, "step": 1}}, "parameters.optimise_s: not a number"),
    ]:
        assert spec_error({"name": "bad", "parameters": content}).startswith(expected), content


def load_yaml_spec(text: str) -> Any:
    from ml.sweep.spec import read_document

    return parse_spec(read_document(text, "yaml"))


def test_a_grid_is_counted_and_indexed_without_being_built() -> None:
    spec = parse_spec(
        {
            "name": "g",
            "parameters": {
                "w": {"values": [0.5, 1.0, 2.0]},
                "epochs": {"low": 10, "high": 40, "step": 15, "type": "int"},
                "solver": {"choices": ["faithful", "converged"]},
            },
        }
    )
    grid = spec.grid()
    assert spec.grid_size() == len(grid) == 18 and spec.grid(limit=4) == grid[:4]
    assert [spec.grid_point(index) for index in range(len(grid))] == grid
    assert [spec.grid_index(point) for point in grid] == list(range(len(grid)))
    assert spec.grid_index({"w": 3.0, "epochs": 10, "solver": "faithful"}) is None
    # The base point (w=1, epochs=60) is off this grid, so the baseline is a trial of its own.
    assert spec.needs_baseline(18)
    on_grid = parse_spec({"name": "b", "parameters": {"w": {"values": [0.5, 1.0, 2.0]}}})
    assert not on_grid.needs_baseline(2) and on_grid.needs_baseline(1)
    # A range of a trillion points is counted, never built, and refused.
    huge = {"name": "h", "parameters": {"w": {"low": 1e-6, "high": 1e6, "step": 1e-6}}}
    assert spec_error(huge).startswith("parameters: the grid has 1000000000000 points")
