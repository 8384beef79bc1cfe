"""Sweep plots: the numbers of each plot on a hand-made sweep, and PNGs drawn from them."""

import io
import json
import math

import numpy as np
import pytest

from app.sweeps.plots import (
    PlotUnavailable,
    TrialPoint,
    UnitPoint,
    _distribution,
    importances_data,
    importances_png,
    loss_curves_data,
    loss_curves_png,
    metric_vs_parameter_data,
    metric_vs_parameter_png,
    parallel_coordinates_data,
    parallel_coordinates_png,
)

TRIALS = [
    TrialPoint(1, {"lr": 0.01, "opt": "adam", "seed_base": 7}, "succeeded", 0.5),
    TrialPoint(2, {"lr": 0.1, "opt": "adam", "seed_base": 7}, "succeeded", 0.7),
    TrialPoint(3, {"lr": 0.01, "opt": "sgd", "seed_base": 7}, "succeeded", 0.2),
    TrialPoint(4, {"lr": 1.0, "opt": "sgd", "seed_base": 7}, "pruned", None),
]


def unit(trial_id: int, index: int, acc: float, epochs: int = 4) -> UnitPoint:
    loss = [1.0 / (epoch + trial_id + index) for epoch in range(1, epochs + 1)]
    return UnitPoint(trial_id, index, {"acc": acc}, {"loss": loss, "fit": loss})


UNITS = [
    unit(1, 0, 0.4),
    unit(1, 1, 0.6),
    unit(2, 0, 0.6),
    unit(2, 1, 0.7),
    unit(2, 2, 0.8),
    unit(3, 0, 0.2, epochs=6),
    unit(4, 0, 0.1, epochs=2),
]


def assert_png(png: bytes) -> None:
    from matplotlib.image import imread

    assert png.startswith(b"\x89PNG")
    image = imread(io.BytesIO(png))
    assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 300
    assert float(np.std(image)) > 0.01  # something was drawn on the white canvas


def round_trip(data: dict) -> dict:
    # The PNG must be drawable from the JSON a client received.
    return json.loads(json.dumps(data, allow_nan=False))


# --- loss curves -------------------------------------------------------------------------------


def test_loss_curves_one_series_per_unit_in_trial_then_unit_order() -> None:
    units = [*UNITS, UnitPoint(5, 0, {}, {"fit": [1.0]})]  # no "loss": left out
    data = loss_curves_data(list(reversed(units)))
    series = data["series"]
    assert data["metric"] == "loss"
    assert [(s["trial_id"], s["unit_index"]) for s in series] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 2),
        (3, 0),
        (4, 0),
    ]
    assert [len(s["values"]) for s in series] == [4, 4, 4, 4, 4, 6, 2]
    assert series[5]["epochs"] == [1, 2, 3, 4, 5, 6]
    assert series[0]["values"] == [1 / 2, 1 / 3, 1 / 4, 1 / 5]
    assert_png(loss_curves_png(round_trip(data)))


def test_loss_curves_nan_becomes_none_and_nonpositive_values_draw() -> None:
    units = [UnitPoint(1, 0, {}, {"gen": [0.5, math.nan, -0.25, math.inf]})]
    data = loss_curves_data(units, metric="gen")
    assert data["series"][0]["values"] == [0.5, None, -0.25, None]
    assert_png(loss_curves_png(round_trip(data)))


def test_loss_curves_many_trials_draw_without_legend() -> None:
    units = [unit(trial_id, 0, 0.5) for trial_id in range(1, 20)]
    assert_png(loss_curves_png(loss_curves_data(units)))


def test_loss_curves_without_history_is_unavailable() -> None:
    assert loss_curves_data(UNITS, metric="nope")["series"] == []
    with pytest.raises(PlotUnavailable, match="nope"):
        loss_curves_png(loss_curves_data(UNITS, metric="nope"))


# --- metric against a parameter ----------------------------------------------------------------


def test_metric_vs_parameter_groups_every_unit_by_x() -> None:
    data = metric_vs_parameter_data(TRIALS, UNITS, "acc", "lr")
    assert data["x_numeric"] is True and data["series_param"] is None
    [series] = data["series"]
    assert series["value"] is None
    points = series["points"]
    assert [p["x"] for p in points] == [0.01, 0.1, 1.0]
    assert [p["n"] for p in points] == [3, 3, 1]
    # lr = 0.01: units 0.4, 0.6 (trial 1) and 0.2 (trial 3): mean 0.4, std 0.2.
    assert points[0]["mean"] == pytest.approx(0.4)
    assert points[0]["stderr"] == pytest.approx(0.2 / math.sqrt(3))
    assert points[1]["mean"] == pytest.approx(0.7)
    assert points[1]["stderr"] == pytest.approx(0.1 / math.sqrt(3))
    # The pruned trial's one unit still counts; one unit has no spread.
    assert points[2] == {"x": 1.0, "mean": pytest.approx(0.1), "stderr": 0.0, "n": 1}
    assert_png(metric_vs_parameter_png(round_trip(data)))


def test_metric_vs_parameter_with_series() -> None:
    data = metric_vs_parameter_data(TRIALS, UNITS, "acc", "lr", series="opt")
    assert [s["value"] for s in data["series"]] == ["adam", "sgd"]
    adam, sgd = (
        [(p["x"], p["mean"], p["stderr"], p["n"]) for p in s["points"]] for s in data["series"]
    )
    assert adam == [
        (0.01, pytest.approx(0.5), pytest.approx(0.1), 2),
        (0.1, pytest.approx(0.7), pytest.approx(0.1 / math.sqrt(3)), 3),
    ]
    assert sgd == [(0.01, pytest.approx(0.2), 0.0, 1), (1.0, pytest.approx(0.1), 0.0, 1)]
    assert_png(metric_vs_parameter_png(round_trip(data)))


def test_metric_vs_parameter_categorical_x_sorted_as_strings() -> None:
    data = metric_vs_parameter_data(TRIALS, UNITS, "acc", "opt", series="lr")
    assert data["x_numeric"] is False
    assert [s["value"] for s in data["series"]] == [0.01, 0.1, 1.0]
    assert [p["x"] for p in data["series"][0]["points"]] == ["adam", "sgd"]
    assert_png(metric_vs_parameter_png(round_trip(data)))


def test_metric_vs_parameter_log_x_over_decades() -> None:
    trials = [TrialPoint(i, {"lr": 10.0**-i}, "succeeded", 0.0) for i in range(1, 6)]
    units = [UnitPoint(i, 0, {"acc": i / 10}, {}) for i in range(1, 6)]
    data = metric_vs_parameter_data(trials, units, "acc", "lr")
    assert [p["x"] for p in data["series"][0]["points"]] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert_png(metric_vs_parameter_png(data))


def test_metric_vs_parameter_without_values_is_unavailable() -> None:
    for metric, x in (("nope", "lr"), ("acc", "nope")):
        data = metric_vs_parameter_data(TRIALS, UNITS, metric, x)
        assert data["series"] == []
        with pytest.raises(PlotUnavailable):
            metric_vs_parameter_png(data)


# --- parallel coordinates ----------------------------------------------------------------------


def test_parallel_coordinates_normalises_each_axis() -> None:
    data = parallel_coordinates_data(TRIALS, objective_name="acc")
    # seed_base never varies; the pruned trial has no objective.
    assert [axis["name"] for axis in data["axes"]] == ["lr", "opt", "acc"]
    lr, opt, objective = data["axes"]
    assert lr == {"name": "lr", "kind": "numeric", "min": 0.01, "max": 0.1, "scale": "linear"}
    assert opt == {
        "name": "opt",
        "kind": "categorical",
        "labels": ["adam", "sgd"],
        "positions": [0.0, 1.0],
    }
    assert objective == {
        "name": "acc",
        "kind": "numeric",
        "min": 0.2,
        "max": 0.7,
        "scale": "linear",
    }
    assert [t["trial_id"] for t in data["trials"]] == [1, 2, 3]
    assert [t["values"] for t in data["trials"]] == [
        [0.01, "adam", 0.5],
        [0.1, "adam", 0.7],
        [0.01, "sgd", 0.2],
    ]
    positions = [t["positions"] for t in data["trials"]]
    assert positions == [[0.0, 0.0, pytest.approx(0.6)], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert_png(parallel_coordinates_png(round_trip(data)))


def test_parallel_coordinates_chosen_params_log_axis_and_constant_axis() -> None:
    trials = [
        TrialPoint(1, {"lr": 1e-4, "k": 3, "opt": "a"}, "succeeded", 1.0),
        TrialPoint(2, {"lr": 1e-3, "k": 3, "opt": "b"}, "succeeded", 2.0),
        TrialPoint(3, {"lr": 1e-1, "k": 3, "opt": "c"}, "succeeded", 3.0),
        TrialPoint(4, {"lr": 1e-2, "k": 3, "opt": "a"}, "failed", None),
    ]
    data = parallel_coordinates_data(trials, params=["lr", "k", "opt"])
    lr, k, opt, _objective = data["axes"]
    assert lr["scale"] == "log" and (lr["min"], lr["max"]) == (1e-4, 1e-1)
    assert [t["positions"][0] for t in data["trials"]] == [0.0, pytest.approx(1 / 3), 1.0]
    assert (k["min"], k["max"]) == (3, 3)  # one value: drawn mid-axis
    assert [t["positions"][1] for t in data["trials"]] == [0.5, 0.5, 0.5]
    assert opt["positions"] == [0.0, 0.5, 1.0]
    assert [t["positions"][2] for t in data["trials"]] == [0.0, 0.5, 1.0]
    assert_png(parallel_coordinates_png(data))


def test_parallel_coordinates_without_succeeded_trials_is_unavailable() -> None:
    data = parallel_coordinates_data([TRIALS[3]])
    assert data["trials"] == []
    with pytest.raises(PlotUnavailable):
        parallel_coordinates_png(data)


# --- importances -------------------------------------------------------------------------------


def test_importances_rank_the_parameter_the_objective_depends_on() -> None:
    rng = np.random.default_rng(0)
    trials = [
        TrialPoint(
            i,
            {"a": float(a), "b": float(b), "k": 5},
            "succeeded",
            -((float(a) - 0.3) ** 2),
        )
        for i, (a, b) in enumerate(rng.uniform(0, 1, size=(30, 2)))
    ]
    trials.append(TrialPoint(99, {"a": 0.3, "b": 0.5, "k": 5}, "failed", None))
    data = importances_data(trials, "maximize")
    assert data["n_trials"] == 30 and data["evaluator"] == "fanova"
    assert list(data["importances"]) == ["a", "b"]  # constant k is left out, largest first
    assert data["importances"]["a"] > data["importances"]["b"]
    assert sum(data["importances"].values()) == pytest.approx(1.0)
    assert importances_data(trials, "maximize") == data  # seeded
    assert_png(importances_png(round_trip(data)))


def test_importances_mixed_parameter_kinds() -> None:
    trials = [
        TrialPoint(
            i,
            {"lr": 10.0**-i, "width": 2**i, "act": "relu" if i % 2 else "tanh"},
            "succeeded",
            float(i % 3),
        )
        for i in range(1, 9)
    ]
    data = importances_data(trials, "minimize")
    assert set(data["importances"]) == {"lr", "width", "act"}


def test_distributions_are_inferred_from_the_values() -> None:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    assert _distribution([1e-4, 1e-1]) == FloatDistribution(1e-4, 1e-1, log=True)
    assert _distribution([0.1, 0.5]) == FloatDistribution(0.1, 0.5)
    assert _distribution([-1.0, 1000.0]) == FloatDistribution(-1.0, 1000.0)
    assert _distribution([16, 1024, 64]) == IntDistribution(16, 1024)
    assert _distribution(["tanh", "relu"]) == CategoricalDistribution(["relu", "tanh"])
    assert _distribution([True, False]) == CategoricalDistribution([False, True])


def test_importances_unavailable() -> None:
    with pytest.raises(PlotUnavailable, match="at least 2"):
        importances_data(TRIALS[:1] + TRIALS[3:], "maximize")
    constant = [TrialPoint(i, {"k": 1}, "succeeded", float(i)) for i in range(5)]
    with pytest.raises(PlotUnavailable, match="more than one value"):
        importances_data(constant, "maximize")
    flat = [TrialPoint(i, {"k": i}, "succeeded", 1.0) for i in range(5)]
    with pytest.raises(PlotUnavailable, match="same objective"):
        importances_data(flat, "minimize")
    with pytest.raises(PlotUnavailable):
        importances_png({"importances": {}, "n_trials": 0, "evaluator": "fanova"})
