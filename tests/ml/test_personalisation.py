"""Personal scores: users with inverted or niche taste get scores that follow their own taste, global
scores and ordinary users lose nothing, the re-fit is deterministic and its spread is its curvature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.config import LicchaviConfig
from ml.data import ComparisonDataset, CriterionComparisons
from ml.licchavi import CriterionResult, finished_result, train_criterion
from ml.licchavi.kernels import NumpyKernels
from ml.licchavi.personalisation import UserComparisons, personalise
from ml.licchavi.problem import Problem
from ml.metrics import mean_user_spearman
from ml.synthetic import MAIN_CRITERION, SyntheticData, SyntheticParams, generate


def criterion(frame: pd.DataFrame) -> CriterionComparisons:
    return ComparisonDataset.from_frame(frame).criteria[MAIN_CRITERION]


@pytest.fixture(scope="module")
def inverted() -> SyntheticData:
    # 10 % of the users rate with inverted taste; sparse, like the service's data.
    params = SyntheticParams(
        n_users=100,
        n_videos=900,
        n_comparisons=10_000,
        seed=7,
        fraction_adversarial=0.1,
        adversarial_mode="reverse",
    )
    return generate(params)


@pytest.fixture(scope="module")
def niche() -> SyntheticData:
    # 10 % of the users share one taste independent of the global one (bench/quality.py's shape).
    params = SyntheticParams(
        n_users=300, n_videos=2700, n_comparisons=30_000, seed=7, fraction_niche=0.1
    )
    return generate(params)


def config(**changes: object) -> LicchaviConfig:
    values: dict[str, object] = {"device": "cpu"}
    values.update(changes)
    return LicchaviConfig.model_validate(values)


def users_spearman(result: CriterionResult, data: SyntheticData, users: list[str]) -> float:
    local = pd.DataFrame(
        {
            "public_username": result.user_ids[result.local_user_index].astype(str),
            "video": result.video_ids[result.local_video_index].astype(str),
            "score": result.local_scores,
        }
    ).merge(
        data.truth_individual.astype({"public_username": str, "video": str}),
        on=["public_username", "video"],
    )
    local = local[local["public_username"].isin(users)]
    value, _ = mean_user_spearman(
        local["public_username"].to_numpy(),
        local["score"].to_numpy(),
        local["true_score"].to_numpy(),
    )
    return value


def test_the_default_is_the_converged_solver_with_personal_scores() -> None:
    default = LicchaviConfig()
    assert default.solver == "converged" and default.personalise is None
    data = criterion(
        generate(SyntheticParams(n_users=20, n_videos=60, n_comparisons=600)).comparisons
    )
    result = train_criterion(data, config())
    collapsed = train_criterion(data, config(personalise=False))
    # The L1 coupling ties most local scores to the global one; the re-fit does not.
    tied = result.local_scores == result.global_scores[result.local_video_index]
    assert tied.mean() < 0.01
    assert (
        collapsed.local_scores == collapsed.global_scores[collapsed.local_video_index]
    ).mean() > 0.5


def follow_their_own_taste(
    data: SyntheticData, deviating: list[str], baseline: LicchaviConfig, baseline_below: float
) -> CriterionResult:
    """Train the default; deviating users reach 0.5 with their own taste (``baseline`` leaves
    them below ``baseline_below``), the global scores are the baseline's, ordinary users lose
    nothing against v1 and at most 0.01 against the baseline. Returns the default's result."""
    comparisons = criterion(data.comparisons)
    personal = train_criterion(comparisons, config())
    before = train_criterion(comparisons, baseline)
    faithful = train_criterion(comparisons, config(solver="faithful"))
    ordinary = sorted(set(comparisons.user_ids.astype(str)) - set(deviating))
    # Personalisation runs after the solver: the global scores are the solver's, bit for bit.
    np.testing.assert_array_equal(personal.global_scores, before.global_scores)
    assert users_spearman(before, data, deviating) < baseline_below
    assert users_spearman(personal, data, deviating) >= 0.5
    assert users_spearman(personal, data, ordinary) >= users_spearman(faithful, data, ordinary)
    assert users_spearman(personal, data, ordinary) >= users_spearman(before, data, ordinary) - 0.01
    return personal


def test_inverted_users_follow_their_own_taste_and_nobody_else_loses(
    inverted: SyntheticData,
) -> None:
    # The solver's own local scores give inverted users the crowd's ranking.
    follow_their_own_taste(inverted, inverted.adversarial_users, config(personalise=False), 0.0)


def test_niche_users_are_tied_to_their_shared_taste_and_nobody_else_loses(
    niche: SyntheticData,
) -> None:
    # Tied to the global scores alone, their own comparisons do not carry niche users far.
    personal = follow_their_own_taste(niche, niche.niche_users, config(personal_tastes=False), 0.4)
    shuffled = niche.comparisons.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = train_criterion(criterion(shuffled), config())
    np.testing.assert_array_equal(personal.local_scores, again.local_scores)


def test_a_taste_that_is_the_global_one_up_to_a_slope_is_not_a_second_taste(
    inverted: SyntheticData,
) -> None:
    # Inverted users' shared taste is −ρ: their slope on ρ serves them, nobody joins a taste.
    data = criterion(inverted.comparisons)
    result = train_criterion(data, config(personalise=False, compute_uncertainty=False))
    users = UserComparisons.of(Problem.build(data.canonical(), NumpyKernels(), "float64"))
    personal = personalise(users, result.global_scores, result.s, coupling=3.0)
    alone = personalise(users, result.global_scores, result.s, 3.0, shared_taste=False)
    assert not personal.second_taste.any()
    np.testing.assert_array_equal(personal.theta, alone.theta)


def test_personal_scores_do_not_depend_on_the_row_order(inverted: SyntheticData) -> None:
    shuffled = inverted.comparisons.sample(frac=1.0, random_state=3).reset_index(drop=True)
    first = train_criterion(criterion(inverted.comparisons), config())
    second = train_criterion(criterion(shuffled), config())
    np.testing.assert_array_equal(first.local_scores, second.local_scores)
    np.testing.assert_array_equal(first.local_uncertainty, second.local_uncertainty)


def test_the_refit_reaches_its_optimum_and_its_spread_is_its_curvature(
    inverted: SyntheticData,
) -> None:
    data = criterion(inverted.comparisons)
    result = train_criterion(data, config(personalise=False, compute_uncertainty=False))
    users = UserComparisons.of(Problem.build(data.canonical(), NumpyKernels(), "float64"))
    personal = personalise(users, result.global_scores, result.s, coupling=3.0)
    assert personal.converged
    inverted_users = np.isin(data.user_ids.astype(str), inverted.adversarial_users)
    assert np.median(personal.slope[inverted_users]) < -0.5
    assert np.median(personal.slope[~inverted_users]) > 0.5
    # The spread is the re-fit's curvature: never above the tie's own 1/sqrt(w), smaller where
    # a user compared a video more often.
    assert np.all(personal.uncertainty <= 3.0**-0.5 + 1e-12)
    counts = np.bincount(np.concatenate([users.pair_a, users.pair_b]), minlength=users.n_pairs)
    once, often = personal.uncertainty[counts == 1], personal.uncertainty[counts >= 4]
    assert np.median(often) < np.median(once)
    served = train_criterion(data, config())
    np.testing.assert_allclose(served.local_scores, personal.theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(served.local_uncertainty, personal.uncertainty, rtol=0, atol=1e-12)


def test_a_finished_state_rebuilds_the_personal_scores(inverted: SyntheticData) -> None:
    data = criterion(inverted.comparisons)
    trained = train_criterion(data, config())
    rebuilt = finished_result(data, config(), trained.state)
    np.testing.assert_array_equal(rebuilt.local_scores, trained.local_scores)
    # The re-fit's settings do not change the solver's state: the same state serves both.
    plain = finished_result(data, config(personalise=False), trained.state)
    assert not np.array_equal(plain.local_scores, trained.local_scores)


def test_the_faithful_solver_keeps_v1s_local_scores_unless_asked() -> None:
    assert LicchaviConfig(solver="faithful").personalise is None
    data = criterion(
        generate(SyntheticParams(n_users=20, n_videos=60, n_comparisons=600)).comparisons
    )
    v1 = train_criterion(data, config(solver="faithful", compute_uncertainty=False))
    asked = train_criterion(
        data, config(solver="faithful", personalise=True, compute_uncertainty=False)
    )
    np.testing.assert_array_equal(v1.global_scores, asked.global_scores)
    assert not np.array_equal(v1.local_scores, asked.local_scores)
