"""Plots of a hyperparameter sweep: each as a JSON-ready dict, and as a PNG drawn from that dict."""

import io
import math
import numbers
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SUCCEEDED = "succeeded"
# Above this many trials a legend hides the curves it describes.
MAX_LEGEND_TRIALS = 12
# A numeric range is drawn (and modelled) on a log scale when it spans more than two decades.
LOG_SPAN = 100.0


class PlotUnavailable(ValueError):
    """The sweep has nothing this plot could show (no trials, no varying parameter, ...)."""


@dataclass(frozen=True)
class TrialPoint:
    trial_id: int
    params: dict[str, Any]
    status: str  # 'succeeded', 'pruned', 'failed', ...
    objective: float | None  # mean objective over units


@dataclass(frozen=True)
class UnitPoint:
    trial_id: int
    unit_index: int
    metrics: dict[str, float]
    history: dict[str, list[float]]


# --- helpers -----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # bool is an int to Python, but a swept flag is a category, not a magnitude.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    """The value as a float, or None when missing or not finite (JSON has no NaN or inf)."""
    if not _is_number(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    """A parameter value as a JSON scalar: numpy scalars become Python numbers, others strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _sorted_values(values: Iterable[Any]) -> tuple[list[Any], bool]:
    """Distinct values, sorted numerically when all are numbers, else as strings."""
    distinct = list(dict.fromkeys(values))
    if distinct and all(_is_number(value) for value in distinct):
        return sorted(distinct, key=float), True
    return sorted(distinct, key=str), False


def _log_scale(values: Sequence[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def _usable(trials: Iterable[TrialPoint]) -> list[TrialPoint]:
    return [
        trial
        for trial in trials
        if trial.status == SUCCEEDED and _finite(trial.objective) is not None
    ]


def _figure(width: float = 7, height: float = 4.2) -> tuple[Any, Any]:
    # Imported here: plotting is only needed by the plot endpoints, never at start-up.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90, layout="constrained")
    return figure, figure.subplots()


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _nan(value: float | None) -> float:
    # matplotlib leaves a gap at NaN, which is what a missing value should look like.
    return math.nan if value is None else float(value)


# --- 1. loss curves ----------------------------------------------------------------------------


def loss_curves_data(units: Sequence[UnitPoint], metric: str = "loss") -> dict[str, Any]:
    """One series per unit that recorded `metric` per epoch; epochs count from 1."""
    series = []
    for unit in sorted(units, key=lambda unit: (unit.trial_id, unit.unit_index)):
        values = unit.history.get(metric)
        if not values:
            continue
        series.append(
            {
                "trial_id": unit.trial_id,
                "unit_index": unit.unit_index,
                "epochs": list(range(1, len(values) + 1)),
                "values": [_finite(value) for value in values],
            }
        )
    return {"metric": metric, "series": series}


def loss_curves_png(data: dict[str, Any]) -> bytes:
    series = [item for item in data["series"] if any(v is not None for v in item["values"])]
    if not series:
        raise PlotUnavailable(f"No unit recorded a history of {data['metric']!r}.")
    trial_ids = sorted({item["trial_id"] for item in series})
    colormap = _colormap("viridis")
    colours = {
        trial_id: colormap(index / max(len(trial_ids) - 1, 1))
        for index, trial_id in enumerate(trial_ids)
    }
    figure, axis = _figure()
    labelled: set[int] = set()
    for item in series:
        trial_id = item["trial_id"]
        # One legend entry per trial, not per unit.
        label = f"trial {trial_id}" if trial_id not in labelled else None
        labelled.add(trial_id)
        values = [_nan(value) for value in item["values"]]
        axis.plot(item["epochs"], values, color=colours[trial_id], linewidth=0.8, label=label)
    present = [value for item in series for value in item["values"] if value is not None]
    if min(present) > 0:
        axis.set_yscale("log")
    axis.set_title(f"{data['metric']} per epoch — {len(series)} units, {len(trial_ids)} trials")
    axis.set_xlabel("epoch")
    axis.set_ylabel(data["metric"])
    if len(trial_ids) <= MAX_LEGEND_TRIALS:
        axis.legend(fontsize="small")
    return _png(figure)


# --- 2. metric against a parameter -------------------------------------------------------------


def metric_vs_parameter_data(
    trials: Sequence[TrialPoint],
    units: Sequence[UnitPoint],
    metric: str,
    x: str,
    series: str | None = None,
) -> dict[str, Any]:
    """Mean, standard error and count of `metric` over the units of every (series, x) group.

    Every unit that recorded a finite `metric` counts, whatever its trial's status; a trial
    without parameter `x` (or `series`) is left out.
    """
    params = {trial.trial_id: trial.params for trial in trials}
    groups: dict[tuple[Any, Any], list[float]] = {}
    for unit in units:
        trial_params = params.get(unit.trial_id)
        value = _finite(unit.metrics.get(metric))
        if trial_params is None or value is None or x not in trial_params:
            continue
        if series is not None and series not in trial_params:
            continue
        key = (
            _plain(trial_params[series]) if series is not None else None,
            _plain(trial_params[x]),
        )
        groups.setdefault(key, []).append(value)

    x_values, x_numeric = _sorted_values(key[1] for key in groups)
    series_values, _ = _sorted_values(key[0] for key in groups)
    out_series = []
    for series_value in series_values:
        points = []
        for x_value in x_values:
            values = groups.get((series_value, x_value))
            if not values:
                continue
            n = len(values)
            stderr = statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0
            points.append(
                {
                    "x": x_value if x_numeric else str(x_value),
                    "mean": _finite(statistics.fmean(values)),
                    "stderr": _finite(stderr),
                    "n": n,
                }
            )
        out_series.append({"value": series_value, "points": points})
    return {
        "metric": metric,
        "x": x,
        "series_param": series,
        "x_numeric": x_numeric,
        "series": out_series,
    }


def metric_vs_parameter_png(data: dict[str, Any]) -> bytes:
    if not any(series["points"] for series in data["series"]):
        raise PlotUnavailable(f"No unit recorded {data['metric']!r} for parameter {data['x']!r}.")
    figure, axis = _figure()
    numeric = data["x_numeric"]
    # Categorical x: one evenly spaced position per label, shared by every series.
    labels = list(dict.fromkeys(p["x"] for s in data["series"] for p in s["points"]))
    position = {label: index for index, label in enumerate(labels)}
    for series in data["series"]:
        points = series["points"]
        if not points:
            continue
        xs = [p["x"] if numeric else position[p["x"]] for p in points]
        label = f"{data['series_param']} = {series['value']}" if data["series_param"] else None
        axis.errorbar(
            xs,
            [_nan(p["mean"]) for p in points],
            yerr=[_nan(p["stderr"]) for p in points],
            marker="o",
            markersize=4,
            capsize=3,
            label=label,
        )
    if numeric:
        if _log_scale([float(label) for label in labels]):
            axis.set_xscale("log")
    else:
        axis.set_xticks(range(len(labels)), [str(label) for label in labels])
    axis.set_title(f"{data['metric']} against {data['x']} (mean ± standard error over units)")
    axis.set_xlabel(data["x"])
    axis.set_ylabel(data["metric"])
    if data["series_param"]:
        axis.legend(fontsize="small")
    return _png(figure)


# --- 3. parallel coordinates -------------------------------------------------------------------


def _numeric_axis(name: str, values: list[Any]) -> tuple[dict[str, Any], list[float | None]]:
    present = [float(value) for value in values if value is not None]
    log = _log_scale(present)
    # A learning rate swept over decades would crowd into the bottom of a linear axis.
    scaled = [math.log10(value) for value in present] if log else present
    low, high = min(scaled), max(scaled)

    def position(value: Any) -> float | None:
        if value is None:
            return None
        if high == low:
            return 0.5
        scaled_value = math.log10(float(value)) if log else float(value)
        return (scaled_value - low) / (high - low)

    axis = {
        "name": name,
        "kind": "numeric",
        "min": min(present),
        "max": max(present),
        "scale": "log" if log else "linear",
    }
    return axis, [position(value) for value in values]


def _categorical_axis(name: str, values: list[Any]) -> tuple[dict[str, Any], list[float | None]]:
    labels, _ = _sorted_values(str(value) for value in values if value is not None)
    step = 1 / (len(labels) - 1) if len(labels) > 1 else 0.0
    positions = [index * step if len(labels) > 1 else 0.5 for index in range(len(labels))]
    where = dict(zip(labels, positions, strict=True))
    axis = {"name": name, "kind": "categorical", "labels": labels, "positions": positions}
    return axis, [None if value is None else where[str(value)] for value in values]


def parallel_coordinates_data(
    trials: Sequence[TrialPoint],
    params: list[str] | None = None,
    objective_name: str = "objective",
) -> dict[str, Any]:
    """Succeeded trials with an objective, each as a line across the parameter axes then the
    objective axis; every axis is mapped to [0, 1].

    Numeric axes are min-max normalised (on log10 when all values are positive and span more
    than two decades); categorical axes place their sorted labels evenly. By default the axes
    are the parameters that take more than one value, sorted by name.
    """
    usable = sorted(_usable(trials), key=lambda trial: trial.trial_id)
    if params is None:
        params = sorted(
            name
            for name in {name for trial in usable for name in trial.params}
            if len({repr(_plain(trial.params.get(name))) for trial in usable}) > 1
        )
    columns: list[tuple[str, list[Any]]] = [
        (name, [_plain(trial.params.get(name)) for trial in usable]) for name in params
    ]
    columns.append((objective_name, [_finite(trial.objective) for trial in usable]))

    axes: list[dict[str, Any]] = []
    positions: list[list[float | None]] = []
    for name, values in columns:
        present = [value for value in values if value is not None]
        # A parameter no trial set falls to the categorical branch: no labels, no positions.
        if present and all(_is_number(value) for value in present):
            axis, column = _numeric_axis(name, values)
        else:
            axis, column = _categorical_axis(name, values)
        axes.append(axis)
        positions.append(column)

    lines = [
        {
            "trial_id": trial.trial_id,
            "values": [values[row] for _, values in columns],
            "positions": [column[row] for column in positions],
            "objective": _finite(trial.objective),
        }
        for row, trial in enumerate(usable)
    ]
    return {"objective_name": objective_name, "axes": axes, "trials": lines}


def _tick(value: float) -> str:
    return f"{value:.3g}"


def parallel_coordinates_png(data: dict[str, Any]) -> bytes:
    lines = data["trials"]
    if not lines:
        raise PlotUnavailable("No succeeded trial with an objective to draw.")
    from matplotlib.colors import Normalize

    axes = data["axes"]
    objectives = [line["objective"] for line in lines]
    norm = Normalize(vmin=min(objectives), vmax=max(objectives))
    colormap = _colormap("viridis")
    figure, axis = _figure(width=max(7.0, 1.3 * len(axes) + 2), height=4.5)
    xs = list(range(len(axes)))
    # Best-coloured lines last, so they are drawn on top.
    for line in sorted(lines, key=lambda line: line["objective"]):
        axis.plot(
            xs,
            [_nan(position) for position in line["positions"]],
            color=colormap(norm(line["objective"])),
            linewidth=1.0,
            alpha=0.8,
        )
    for x, spec in zip(xs, axes, strict=True):
        axis.axvline(x, color="black", linewidth=0.8)
        if spec["kind"] == "numeric":
            ticks = [(0.0, _tick(spec["min"])), (1.0, _tick(spec["max"]))]
        else:
            ticks = list(zip(spec["positions"], spec["labels"], strict=True))
        for y, text in ticks:
            axis.text(
                x,
                y,
                text,
                fontsize="x-small",
                va="center",
                ha="left",
                # Keeps a label readable where the lines cross it.
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
            )
    axis.set_xticks(xs, [spec["name"] for spec in axes], rotation=20)
    axis.set_xlim(-0.2, len(axes) - 0.6)
    axis.set_ylim(-0.05, 1.05)
    axis.set_yticks([])
    axis.set_title(f"{len(lines)} trials")
    mappable = _scalar_mappable(norm, colormap)
    figure.colorbar(mappable, ax=axis, label=data["objective_name"])
    return _png(figure)


def _scalar_mappable(norm: Any, colormap: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=colormap)


# --- 4. parameter importances ------------------------------------------------------------------


def _distribution(values: list[Any]) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if all(_is_number(value) for value in values):
        if all(isinstance(value, numbers.Integral) for value in values):
            return IntDistribution(int(min(values)), int(max(values)))
        floats = [float(value) for value in values]
        return FloatDistribution(min(floats), max(floats), log=_log_scale(floats))
    choices, _ = _sorted_values(values)
    return CategoricalDistribution(choices)


def importances_data(
    trials: Sequence[TrialPoint],
    direction: Literal["maximize", "minimize"],
    seed: int = 0,
) -> dict[str, Any]:
    """fANOVA importance of each varying parameter for the objective of the succeeded trials.

    Only parameters set in every usable trial and taking more than one value are assessed;
    importances sum to 1 and are sorted from the most important.
    """
    usable = _usable(trials)
    if len(usable) < 2:
        raise PlotUnavailable(
            f"Importances need at least 2 succeeded trials with an objective; got {len(usable)}."
        )
    names = sorted(set.intersection(*(set(trial.params) for trial in usable)))
    values = {name: [_plain(trial.params[name]) for trial in usable] for name in names}
    varying = [
        name
        for name in names
        if None not in values[name]
        and not any(isinstance(v, float) and not math.isfinite(v) for v in values[name])
        and len({repr(value) for value in values[name]}) > 1
    ]
    if not varying:
        raise PlotUnavailable("Importances need a parameter that takes more than one value.")
    objectives = [float(trial.objective) for trial in usable if trial.objective is not None]
    if len(set(objectives)) < 2:
        raise PlotUnavailable("Every trial has the same objective: no parameter explains it.")

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {name: _distribution(values[name]) for name in varying}
    with warnings.catch_warnings():
        # fANOVA and create_trial are flagged experimental; the flag is noise in service logs.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction=direction)
        study.add_trials(
            [
                optuna.trial.create_trial(
                    params={name: values[name][row] for name in varying},
                    distributions=distributions,
                    value=objective,
                )
                for row, objective in enumerate(objectives)
            ]
        )
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
        )
    ranked = sorted(importances.items(), key=lambda item: (-item[1], item[0]))
    return {
        "importances": {name: float(value) for name, value in ranked},
        "n_trials": len(usable),
        "evaluator": "fanova",
    }


def importances_png(data: dict[str, Any]) -> bytes:
    importances = data["importances"]
    if not importances:
        raise PlotUnavailable("No parameter importance to draw.")
    ranked = sorted(importances.items(), key=lambda item: item[1])
    figure, axis = _figure(height=max(2.5, 0.45 * len(ranked) + 1.2))
    names = [name for name, _ in ranked]
    bars = axis.barh(names, [value for _, value in ranked], color=_colormap("viridis")(0.35))
    axis.bar_label(bars, fmt="%.3f", padding=2, fontsize="small")
    axis.set_xlim(0, max(1.0, max(importances.values())) * 1.1)
    axis.set_xlabel("importance (fANOVA, sums to 1)")
    axis.set_title(f"parameter importances — {data['n_trials']} trials")
    return _png(figure)
