"""Leaderboard statistics: bootstrap intervals, ranking, paired comparisons, config diffs."""

import math
import random

import numpy as np
import pytest
from scipy import stats

from app.sweeps.stats import (
    LeaderboardRow,
    UnitValue,
    bootstrap_interval,
    differing_parameters,
    leaderboard,
)


def units_of(values_by_trial: dict[int, list[float]]) -> list[UnitValue]:
    return [
        UnitValue(trial_id, index, value)
        for trial_id, values in values_by_trial.items()
        for index, value in enumerate(values)
    ]


def by_id(rows: list[LeaderboardRow]) -> dict[int, LeaderboardRow]:
    return {row.trial_id: row for row in rows}


INCUMBENT = [0.70, 0.72, 0.68, 0.71, 0.69]
STEADY = [value + 0.1 for value in INCUMBENT]
NOISY = [0.50, 1.20, 0.60, 1.10, 0.95]  # mean 0.87, above STEADY's 0.80


# --- bootstrap_interval -------------------------------------------------------------------------


def test_bootstrap_matches_the_percentile_definition() -> None:
    values = np.array([0.3, 0.9, 0.5, 0.7, 0.1, 0.4])
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, 6, size=(500, 6))].mean(axis=1)
    expected = tuple(np.quantile(means, [0.05, 0.95]))
    assert bootstrap_interval(values, confidence=0.90, resamples=500, seed=7) == expected


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    values = np.array([0.3, 0.9, 0.5, 0.7, 0.1, 0.4])
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_bootstrap_known_cases() -> None:
    # Resampled means of [0, 1] are 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4.
    assert bootstrap_interval(np.array([0.0, 1.0])) == (0.0, 1.0)
    assert bootstrap_interval(np.array([0.42])) == (0.42, 0.42)
    assert bootstrap_interval(np.array([0.1] * 7)) == (0.1, 0.1)
    low, high = bootstrap_interval(np.array([]))
    assert math.isnan(low) and math.isnan(high)
    low, high = bootstrap_interval(np.array([math.nan]))
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_ignores_nans_and_contains_the_mean() -> None:
    values = np.array([0.3, 0.9, 0.5, 0.7, 0.1, 0.4])
    with_nans = np.array([0.3, math.nan, 0.9, 0.5, 0.7, math.nan, 0.1, 0.4])
    assert bootstrap_interval(with_nans) == bootstrap_interval(values)
    generator = np.random.default_rng(11)
    for size in (2, 3, 5, 20, 100):
        sample = generator.lognormal(size=size)
        low, high = bootstrap_interval(sample)
        assert low <= sample.mean() <= high
        assert low < high
    wide = bootstrap_interval(values, confidence=0.99)
    narrow = bootstrap_interval(values, confidence=0.5)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(np.array([1.0, 2.0]), confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(np.array([1.0, 2.0]), resamples=0)


# --- leaderboard --------------------------------------------------------------------------------


def test_steady_improvement_over_the_incumbent() -> None:
    rows = leaderboard(units_of({10: INCUMBENT, 11: STEADY}), direction="maximize", incumbent_id=10)
    steady = by_id(rows)[11]
    comparison = steady.vs_incumbent
    assert comparison is not None
    differences = np.array(STEADY) - np.array(INCUMBENT)
    assert comparison.incumbent_id == 10
    assert comparison.n_pairs == 5
    assert comparison.mean_difference == pytest.approx(0.1)
    assert comparison.ci_low == pytest.approx(0.1)
    assert comparison.ci_high == pytest.approx(0.1)
    assert comparison.p_value == stats.wilcoxon(differences).pvalue == pytest.approx(0.0625)
    assert comparison.better is True
    assert by_id(rows)[10].vs_incumbent is None
    assert [row.trial_id for row in rows] == [11, 10]
    assert [row.rank for row in rows] == [1, 2]


def test_exact_wilcoxon_p_value() -> None:
    # Five distinct positive differences: the exact two-sided p is 2 / 2**5.
    trial = [
        value + shift for value, shift in zip(INCUMBENT, [0.1, 0.2, 0.3, 0.4, 0.5], strict=True)
    ]
    rows = leaderboard(units_of({1: INCUMBENT, 2: trial}), direction="maximize", incumbent_id=1)
    comparison = by_id(rows)[2].vs_incumbent
    assert comparison is not None
    assert comparison.p_value == pytest.approx(0.0625)
    assert comparison.mean_difference == pytest.approx(0.3)
    assert comparison.ci_low <= 0.3 <= comparison.ci_high


def test_noisy_trial_with_a_higher_mean_ranks_below_a_steady_one() -> None:
    rows = leaderboard(
        units_of({1: INCUMBENT, 2: STEADY, 3: NOISY}), direction="maximize", incumbent_id=1
    )
    table = by_id(rows)
    assert table[3].mean > table[2].mean
    assert table[3].ci_low < table[2].ci_low
    assert [row.trial_id for row in rows] == [2, 1, 3]
    assert [row.rank for row in rows] == [1, 2, 3]
    noisy = table[3].vs_incumbent
    assert noisy is not None
    assert noisy.mean_difference == pytest.approx(np.mean(NOISY) - np.mean(INCUMBENT))
    assert noisy.ci_low < 0 < noisy.ci_high
    assert noisy.better is False
    for row in rows:
        assert row.n == 5
        assert row.ci_low <= row.mean <= row.ci_high
        assert row.std == pytest.approx(
            np.std({1: INCUMBENT, 2: STEADY, 3: NOISY}[row.trial_id], ddof=1)
        )


def test_minimize_ranks_by_the_upper_bound() -> None:
    losses = {
        1: [0.50, 0.52, 0.48, 0.50],  # incumbent
        2: [0.40, 0.62, 0.30, 0.60],  # lowest mean (0.48), wide
        3: [0.30, 0.31, 0.29, 0.30],  # clearly lower
        4: [0.70, 0.71, 0.69, 0.70],  # clearly higher
    }
    rows = leaderboard(units_of(losses), direction="minimize", incumbent_id=1)
    assert [row.trial_id for row in rows] == [3, 1, 2, 4]
    table = by_id(rows)
    assert table[2].mean < table[1].mean
    assert table[2].ci_high > table[1].ci_high
    better = {
        trial_id: row.vs_incumbent.better for trial_id, row in table.items() if row.vs_incumbent
    }
    assert better == {2: False, 3: True, 4: False}
    # In the maximize direction the same numbers rank the other way round.
    rows = leaderboard(units_of(losses), direction="maximize", incumbent_id=1)
    assert [row.trial_id for row in rows] == [4, 1, 2, 3]
    assert by_id(rows)[4].vs_incumbent.better is True  # type: ignore[union-attr]


def test_ties_break_by_mean_then_trial_id() -> None:
    values = {
        7: [0.5],  # interval (0.5, 0.5)
        5: [0.5],  # same interval and mean, lower id
        6: [0.5, 0.5, 0.9],  # lower bound 0.5 as well, higher mean
    }
    rows = leaderboard(units_of(values), direction="maximize", incumbent_id=None)
    assert by_id(rows)[6].ci_low == 0.5
    assert [row.trial_id for row in rows] == [6, 5, 7]
    assert all(row.vs_incumbent is None for row in rows)
    rows = leaderboard(units_of({2: [0.5], 1: [0.5]}), direction="minimize", incumbent_id=None)
    assert [row.trial_id for row in rows] == [1, 2]


def test_nan_values_are_dropped_before_anything() -> None:
    units = units_of({1: [0.70, 0.72, 0.68], 2: [0.80, math.nan, 0.78], 3: [math.nan, math.nan]})
    rows = leaderboard(units, direction="maximize", incumbent_id=1)
    table = by_id(rows)
    assert set(table) == {1, 2}
    assert table[2].n == 2
    assert table[2].mean == pytest.approx(0.79)
    comparison = table[2].vs_incumbent
    assert comparison is not None
    assert comparison.n_pairs == 2
    assert comparison.mean_difference == pytest.approx(((0.80 - 0.70) + (0.78 - 0.68)) / 2)


def test_comparison_edge_cases() -> None:
    units = [
        *units_of({1: [0.5, 0.6, 0.7], 2: [0.5, 0.6, 0.7], 3: [0.9]}),
        UnitValue(4, 10, 0.9),  # no unit shared with the incumbent
    ]
    table = by_id(leaderboard(units, direction="maximize", incumbent_id=1))
    same = table[2].vs_incumbent
    assert same is not None
    assert (same.n_pairs, same.mean_difference, same.p_value, same.better) == (3, 0.0, 1.0, False)
    single = table[3].vs_incumbent
    assert single is not None
    # One pair: a zero-width interval is no evidence of being better.
    assert (single.n_pairs, single.ci_low, single.ci_high) == (
        1,
        pytest.approx(0.4),
        pytest.approx(0.4),
    )
    assert single.p_value == 1.0
    assert single.better is False
    unpaired = table[4].vs_incumbent
    assert unpaired is not None
    assert unpaired.n_pairs == 0 and unpaired.p_value is None and unpaired.better is False
    assert math.isnan(unpaired.mean_difference)
    # An incumbent without values leaves every comparison unpaired.
    table = by_id(leaderboard(units, direction="maximize", incumbent_id=99))
    assert all(
        row.vs_incumbent is not None and row.vs_incumbent.n_pairs == 0 for row in table.values()
    )


def test_leaderboard_is_deterministic_and_order_independent() -> None:
    units = units_of({1: INCUMBENT, 2: STEADY, 3: NOISY})
    first = leaderboard(units, direction="maximize", incumbent_id=1, seed=5)
    shuffled = list(units)
    random.Random(1).shuffle(shuffled)
    assert leaderboard(shuffled, direction="maximize", incumbent_id=1, seed=5) == first
    other_seed = leaderboard(units, direction="maximize", incumbent_id=1, seed=6)
    assert by_id(other_seed)[3].ci_low != by_id(first)[3].ci_low


def test_leaderboard_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="trial 1 has unit 0 twice"):
        leaderboard(
            [UnitValue(1, 0, 0.5), UnitValue(1, 0, 0.6)], direction="maximize", incumbent_id=None
        )
    with pytest.raises(ValueError, match="direction"):
        leaderboard([], direction="up", incumbent_id=None)  # type: ignore[arg-type]
    assert leaderboard([], direction="maximize", incumbent_id=None) == []


# --- differing_parameters -----------------------------------------------------------------------


def test_differing_parameters() -> None:
    configs = {
        3: {"w": 0.5, "lr_node": 0.9, "solver": "converged", "warm": True, "k": 1, "note": None},
        1: {"w": 0.5, "lr_node": 0.5, "solver": "converged", "warm": 1, "k": 1.0},
        2: {"w": 0.5, "lr_node": 0.9, "solver": "converged", "warm": True, "k": 1, "extra": "x"},
    }
    assert differing_parameters(configs) == {
        "extra": {3: None, 1: None, 2: "x"},
        "lr_node": {3: 0.9, 1: 0.5, 2: 0.9},
        "note": {3: None, 1: None, 2: None},
        "warm": {3: True, 1: 1, 2: True},
    }
    assert list(differing_parameters(configs)) == ["extra", "lr_node", "note", "warm"]


def test_differing_parameters_edge_cases() -> None:
    assert differing_parameters({}) == {}
    assert differing_parameters({1: {"w": 0.5}}) == {}
    assert differing_parameters({1: {"w": math.nan}, 2: {"w": math.nan}}) == {}
    assert differing_parameters({1: {"w": None}, 2: {"w": None}}) == {}
    assert differing_parameters({1: {"w": None}, 2: {}}) == {"w": {1: None, 2: None}}
    assert differing_parameters({1: {"grid": [1, 2]}, 2: {"grid": [1, 3]}}) == {
        "grid": {1: [1, 2], 2: [1, 3]}
    }
