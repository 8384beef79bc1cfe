"""Leaderboard statistics for sweep trials: bootstrap intervals, paired comparisons, config diffs.

A trial is evaluated on units (seed, fold); the same `unit_index` means the same seed and fold
in every trial, so two trials compare on the units both have (paired differences).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class UnitValue:
    """One evaluation of one trial: a (seed, fold) unit."""

    trial_id: int
    unit_index: int  # same index = same seed/fold across trials (paired)
    value: float


@dataclass(frozen=True)
class PairedComparison:
    """A trial against the incumbent on the units both have; differences are trial − incumbent."""

    incumbent_id: int
    n_pairs: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float | None  # two-sided Wilcoxon signed-rank; None without pairs
    better: bool  # the interval excludes 0 on the good side of the direction


@dataclass(frozen=True)
class LeaderboardRow:
    trial_id: int
    n: int
    mean: float
    std: float  # sample standard deviation; 0.0 for a single unit
    ci_low: float
    ci_high: float
    rank: int  # 1-based
    vs_incumbent: PairedComparison | None


def bootstrap_interval(
    values: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; NaNs are ignored.

    (v, v) for one value (or values all equal), (nan, nan) for none. The same seed gives the
    same interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    data = np.asarray(values, dtype=float).ravel()
    data = data[~np.isnan(data)]
    if data.size == 0:
        return math.nan, math.nan
    if data.size == 1 or np.all(data == data[0]):
        # Resampled means of equal values can drift by a rounding error off the value itself.
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def leaderboard(
    units: list[UnitValue],
    *,
    direction: Direction,
    incumbent_id: int | None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    paired_window: tuple[int, int] | None = None,
) -> list[LeaderboardRow]:
    """Trials ranked by the pessimistic end of their interval, best first.

    maximize: by `ci_low` descending, then mean descending; minimize: by `ci_high` ascending,
    then mean ascending; then trial id. NaN values are dropped first; a trial left without
    values is not listed. Every row but the incumbent's carries its paired comparison with the
    incumbent (n_pairs 0 when they share no unit); with `paired_window=(offset, limit)` only the
    rows of that page do (the others carry None), since a page shows no more.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    by_trial = _by_trial(units)
    incumbent = by_trial.get(incumbent_id, {}) if incumbent_id is not None else None
    intervals = _intervals(by_trial, confidence, resamples, seed)

    unranked: list[tuple[int, int, float, float, float, float]] = []
    for trial_id, values_by_unit in by_trial.items():
        values = np.fromiter(values_by_unit.values(), dtype=float, count=len(values_by_unit))
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        low, high = intervals[trial_id]
        unranked.append((trial_id, values.size, mean, std, low, high))
    if direction == "maximize":
        unranked.sort(key=lambda row: (-row[4], -row[2], row[0]))
    else:
        unranked.sort(key=lambda row: (row[5], row[2], row[0]))

    first, stop = 0, len(unranked)
    if paired_window is not None:
        first, stop = paired_window[0], paired_window[0] + paired_window[1]
    rows = []
    for position, (trial_id, n, mean, std, low, high) in enumerate(unranked):
        comparison = None
        if (
            first <= position < stop
            and incumbent is not None
            and incumbent_id is not None
            and trial_id != incumbent_id
        ):
            differences = _differences(by_trial[trial_id], incumbent)
            comparison = _paired(differences, incumbent_id, direction, confidence, resamples, seed)
        rows.append(
            LeaderboardRow(
                trial_id=trial_id,
                n=n,
                mean=mean,
                std=std,
                ci_low=low,
                ci_high=high,
                rank=position + 1,
                vs_incumbent=comparison,
            )
        )
    return rows


def _intervals(
    by_trial: dict[int, dict[int, float]], confidence: float, resamples: int, seed: int
) -> dict[int, tuple[float, float]]:
    """bootstrap_interval of every trial's values (in unit order), computed together.

    Trials with the same number of values share the resample indices bootstrap_interval would
    draw for them (same seed, same size), so one array operation per size gives exactly the
    per-trial results, in a fraction of the time at thousands of trials.
    """
    tail = (1.0 - confidence) / 2.0
    intervals: dict[int, tuple[float, float]] = {}
    by_size: dict[int, list[tuple[int, list[float]]]] = {}
    for trial_id, values_by_unit in by_trial.items():
        values = [values_by_unit[index] for index in sorted(values_by_unit)]
        if len(values) == 1 or all(value == values[0] for value in values):
            intervals[trial_id] = (values[0], values[0])
        else:
            by_size.setdefault(len(values), []).append((trial_id, values))
    for size, group in by_size.items():
        draws = np.random.default_rng(seed).integers(0, size, size=(resamples, size))
        matrix = np.array([values for _trial, values in group], dtype=float)
        # Bounded blocks: a (trials × resamples × size) array for every trial at once could
        # take gigabytes.
        block = max(1, 2_000_000 // (resamples * size))
        for start in range(0, len(group), block):
            means = matrix[start : start + block][:, draws].mean(axis=2)
            bounds = np.quantile(means, [tail, 1.0 - tail], axis=1)
            for offset, (trial_id, _values) in enumerate(group[start : start + block]):
                intervals[trial_id] = (float(bounds[0, offset]), float(bounds[1, offset]))
    return intervals


def _by_trial(units: Iterable[UnitValue]) -> dict[int, dict[int, float]]:
    by_trial: dict[int, dict[int, float]] = {}
    for unit in units:
        value = float(unit.value)
        if math.isnan(value):
            continue
        values = by_trial.setdefault(unit.trial_id, {})
        if unit.unit_index in values:
            raise ValueError(f"trial {unit.trial_id} has unit {unit.unit_index} twice")
        values[unit.unit_index] = value
    return by_trial


def _differences(trial: dict[int, float], incumbent: dict[int, float]) -> np.ndarray:
    """trial − incumbent on the units both have, in unit order."""
    shared = sorted(trial.keys() & incumbent.keys())
    return np.array([trial[index] - incumbent[index] for index in shared], dtype=float)


def _paired(
    differences: np.ndarray,
    incumbent_id: int,
    direction: Direction,
    confidence: float,
    resamples: int,
    seed: int,
) -> PairedComparison:
    if differences.size == 0:
        return PairedComparison(incumbent_id, 0, math.nan, math.nan, math.nan, None, False)
    low, high = bootstrap_interval(
        differences, confidence=confidence, resamples=resamples, seed=seed
    )
    p_value = 1.0  # scipy's statistic is undefined without a non-zero difference
    if np.any(differences != 0):
        # Imported here: SciPy costs the API's start-up a third of a second otherwise.
        from scipy import stats

        p_value = float(stats.wilcoxon(differences).pvalue)
    # One pair gives a zero-width interval, which says nothing about the spread.
    if differences.size < 2:
        better = False
    elif direction == "maximize":
        better = low > 0
    else:
        better = high < 0
    return PairedComparison(
        incumbent_id=incumbent_id,
        n_pairs=int(differences.size),
        mean_difference=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        better=bool(better),
    )


def differing_parameters(configs: dict[int, dict[str, Any]]) -> dict[str, dict[int, Any]]:
    """The keys whose values are not the same in every trial, sorted by key, each with every
    trial's value (None where the trial lacks the key, which counts as a difference).

    1 and 1.0 are the same value; True and 1 are not (JSON tells them apart); NaN equals NaN.
    """
    missing = object()
    keys = sorted({key for config in configs.values() for key in config})
    differing: dict[str, dict[int, Any]] = {}
    for key in keys:
        values = [config.get(key, missing) for config in configs.values()]
        first = values[0]
        if all(_same(first, value, missing) for value in values[1:]):
            continue
        differing[key] = {
            trial_id: None if value is missing else value
            for trial_id, value in zip(configs, values, strict=True)
        }
    return differing


def _same(a: Any, b: Any, missing: object) -> bool:
    if a is missing or b is missing:
        return a is b
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(type(a) is type(b) or _both_numbers(a, b)) and bool(a == b)


def _both_numbers(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float)
