"""Voting rights: the per-pair weights of the coupling, v1's results without trust data, and the
cap on what untrusted accounts can do to a video once the honest users are trusted."""

import numpy as np
import pandas as pd
import pytest

from ml.config import LicchaviConfig
from ml.data import ComparisonDataset, CriterionComparisons
from ml.licchavi import train_criterion
from ml.licchavi import voting_rights as rights
from ml.licchavi.problem import data_fingerprint
from ml.sybil import sybil_attack
from ml.synthetic import MAIN_CRITERION, SyntheticParams, generate


def criterion(frame: pd.DataFrame) -> CriterionComparisons:
    return ComparisonDataset.from_frame(frame).criteria[MAIN_CRITERION]


def config(solver: str = "converged", **changes: object) -> LicchaviConfig:
    values: dict[str, object] = {"solver": solver, "device": "cpu", "compute_uncertainty": False}
    values.update(changes)
    return LicchaviConfig.model_validate(values)


def test_trusted_get_one_and_untrusted_share_the_budget() -> None:
    # Video 0: users 0-2 trusted, users 3-12 untrusted. Video 1: user 3 alone (untrusted).
    # Video 2: user 0 alone (trusted).
    pair_user = np.array([*range(13), 3, 0])
    pair_video = np.array([0] * 13 + [1, 2])
    trusted = np.array([True, True, True] + [False] * 10)
    result = rights.voting_rights(pair_user, pair_video, trusted, 3, bias=2.0, scale=0.1)
    assert result is not None
    np.testing.assert_array_equal(result[:3], 1.0)
    np.testing.assert_allclose(result[3:13], (2.0 + 0.1 * 3) / 10)
    assert result[13] == 1.0  # a budget of 2 for one untrusted contributor: capped at 1
    assert result[14] == 1.0
    # However many untrusted accounts join, their rights on video 0 sum to the budget.
    many = np.arange(1003)
    crowd = rights.voting_rights(many, np.zeros(1003, int), many < 3, 1, bias=2.0, scale=0.1)
    assert crowd is not None
    assert crowd[3:].sum() == pytest.approx(2.3)


def test_no_trust_data_means_no_weights() -> None:
    pair_user, pair_video = np.array([0, 1]), np.array([0, 0])
    assert rights.voting_rights(pair_user, pair_video, None, 1) is None
    assert rights.voting_rights(pair_user, pair_video, np.array([False, False]), 1) is None


def small_set() -> pd.DataFrame:
    return generate(
        SyntheticParams(n_users=50, n_videos=450, n_comparisons=5000, seed=7)
    ).comparisons


@pytest.mark.parametrize("solver", ["faithful", "converged"])
def test_nobody_trusted_is_v1_bit_for_bit(solver: str) -> None:
    data = criterion(small_set())
    unmarked = data.with_trusted(["nobody-of-this-set"])
    assert unmarked.trusted is None
    assert data_fingerprint(unmarked) == data_fingerprint(data)
    before = train_criterion(data, config(solver))
    after = train_criterion(unmarked, config(solver))
    np.testing.assert_array_equal(before.global_scores, after.global_scores)
    np.testing.assert_array_equal(before.local_scores, after.local_scores)
    assert after.trusted_users == 0


@pytest.mark.parametrize("solver", ["faithful", "converged"])
def test_everyone_trusted_gives_the_same_scores(solver: str) -> None:
    # Every voting right is 1: the same J, computed with the per-pair weights.
    data = criterion(small_set())
    everyone = data.with_trusted(data.user_ids)
    assert everyone.trusted is not None and everyone.trusted.all()
    assert data_fingerprint(everyone) != data_fingerprint(data)
    before = train_criterion(data, config(solver))
    after = train_criterion(everyone, config(solver))
    if solver == "faithful":  # w = 1: every product by a right of 1 is exact
        np.testing.assert_array_equal(before.global_scores, after.global_scores)
    else:
        np.testing.assert_allclose(before.global_scores, after.global_scores, atol=1e-6)
    assert after.trusted_users == data.n_users


def target_rank(frame: pd.DataFrame, target: str, trusted: list[str] | None) -> tuple[int, float]:
    data = criterion(frame).with_trusted(trusted)
    result = train_criterion(data, config())
    scores = pd.Series(result.global_scores, index=result.video_ids.astype(str))
    return int((scores > scores[target]).sum()) + 1, float(scores[target])


def test_trusted_honest_users_hold_the_target_against_twenty_fakes() -> None:
    generated = generate(SyntheticParams(n_users=50, n_videos=450, n_comparisons=5000, seed=7))
    honest = sorted(generated.comparisons["public_username"].astype(str).unique())
    clean = sybil_attack(generated, n_fake=0)
    attack = sybil_attack(generated, n_fake=20)
    target = attack.target

    plain_before, _ = target_rank(clean.comparisons, target, None)
    plain_after, _ = target_rank(attack.comparisons, target, None)
    before, score_before = target_rank(clean.comparisons, target, honest)
    after, score_after = target_rank(attack.comparisons, target, honest)

    assert before == plain_before  # every contributor trusted: the same ranking
    assert plain_before - plain_after > 100  # without trust the fakes lift it far
    assert before - after < (plain_before - plain_after) / 10
    # Their combined pull on the target is at most w·budget, which the w0·ρ² prior alone
    # absorbs within budget / (2·w0).
    budget = rights.OVER_TRUST_BIAS + rights.OVER_TRUST_SCALE * attack.honest_contributors
    assert score_after - score_before <= budget / 2 + 1e-9


def test_a_small_trusted_share_under_attack_reaches_the_tolerance() -> None:
    # 10 of 50 users trusted and 50 fake accounts: 88 % of the pairs get a right under 0.05.
    # A fake account's target then settles where its fit's −log t meets w·v_nv·t, at t ≈ 55,000
    # with f'' ≈ 1e-9, and a damping of 1e-2 rather than relative to that curvature made every
    # step a few units long: the solver stopped at 3,000 iterations, stationarity 1.2.
    generated = generate(SyntheticParams(n_users=50, n_videos=450, n_comparisons=5000, seed=7))
    honest = sorted(generated.comparisons["public_username"].astype(str).unique())
    trusted = [str(user) for user in np.random.default_rng(7).choice(honest, 10, replace=False)]
    attack = sybil_attack(generated, n_fake=50, seed=7)
    data = criterion(attack.comparisons).with_trusted(trusted)
    result = train_criterion(data, config())
    assert result.converged and result.stationarity <= 1e-5
    assert result.epochs < 500  # 133 here
    # Canonical order: the same comparisons in another order give the same bits.
    shuffled = attack.comparisons.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = train_criterion(criterion(shuffled).with_trusted(trusted), config())
    np.testing.assert_array_equal(result.global_scores, again.global_scores)
    np.testing.assert_array_equal(result.local_scores, again.local_scores)
