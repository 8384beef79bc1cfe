"""The synthetic generator: sizes, uniqueness, score range, rating law and sign convention."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml.synthetic import SyntheticParams, generate, sample_continuous_bt, split_heldout

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "licchavi-v1-reference"


def small(**changes: object) -> SyntheticParams:
    values: dict[str, object] = {"n_users": 40, "n_videos": 300, "n_comparisons": 4000, "seed": 3}
    values.update(changes)
    return SyntheticParams.model_validate(values)


def truth_difference(comparisons: pd.DataFrame, truth: pd.DataFrame, per_user: bool) -> np.ndarray:
    """true(video_b) − true(video_a), personal or global."""
    if per_user:
        lookup = truth.set_index(["public_username", "video"])["true_score"]
        a = lookup.reindex(
            pd.MultiIndex.from_arrays([comparisons.public_username, comparisons.video_a])
        )
        b = lookup.reindex(
            pd.MultiIndex.from_arrays([comparisons.public_username, comparisons.video_b])
        )
    else:
        lookup = truth.set_index("video")["true_score"]
        a, b = lookup.reindex(comparisons.video_a), lookup.reindex(comparisons.video_b)
    return b.to_numpy(np.float64) - a.to_numpy(np.float64)


def sign_agreement(scores: np.ndarray, difference: np.ndarray) -> float:
    rated = scores != 0
    return float(np.mean(np.sign(scores[rated]) == np.sign(difference[rated])))


def test_sizes_ids_and_score_range() -> None:
    data = generate(small())
    comparisons = data.comparisons
    assert list(comparisons.columns) == [
        "public_username",
        "video_a",
        "video_b",
        "criteria",
        "score",
        "score_max",
        "week_date",
    ]
    assert len(comparisons) == 4000
    assert comparisons.public_username.nunique() == 40  # everyone compares at least once
    assert comparisons.public_username.astype(str).str.fullmatch(r"user\d{5}").all()
    assert comparisons.video_a.astype(str).str.fullmatch(r"vid\d{8}").all()
    assert comparisons.score.dtype.kind == "i"
    assert comparisons.score.between(-10, 10).all()
    assert set(comparisons.score.unique()) >= {-10, 0, 10}
    assert (comparisons.score_max == 10).all()
    assert (comparisons.video_a != comparisons.video_b).all()
    assert len(data.truth_global) == 300
    # Monday weeks, as in the public dataset.
    assert (pd.to_datetime(comparisons.week_date.astype(str)).dt.dayofweek == 0).all()


def test_pairs_are_unique_per_user_unordered() -> None:
    comparisons = generate(small(n_videos=60, pop_sigma=2.0)).comparisons
    low = np.minimum(comparisons.video_a.cat.codes, comparisons.video_b.cat.codes)
    high = np.maximum(comparisons.video_a.cat.codes, comparisons.video_b.cat.codes)
    keys = pd.DataFrame({"user": comparisons.public_username.cat.codes, "low": low, "high": high})
    assert not keys.duplicated().any()


def test_activity_and_popularity_are_skewed() -> None:
    comparisons = generate(small(n_users=200, n_comparisons=20000)).comparisons
    per_user = comparisons.public_username.value_counts()
    per_video = pd.concat([comparisons.video_a, comparisons.video_b]).value_counts()
    assert per_user.max() > 5 * per_user.median()
    assert per_video.max() > 3 * per_video.median()


def test_extra_criteria_rate_a_subset_of_pairs() -> None:
    data = generate(small(criteria=["largely_recommended", "importance"], p_extra_criteria=0.5))
    counts = data.comparisons.criteria.value_counts()
    assert counts["largely_recommended"] == 4000
    assert 1700 < counts["importance"] < 2300
    main = data.truth_global[data.truth_global.criteria == "largely_recommended"].true_score
    extra = data.truth_global[data.truth_global.criteria == "importance"].true_score
    assert 0.45 < np.corrcoef(main, extra)[0, 1] < 0.75


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again = generate(small()), generate(small())
    pd.testing.assert_frame_equal(first.comparisons, again.comparisons)
    other = generate(small(seed=4))
    assert not first.comparisons.score.equals(other.comparisons.score)


def test_users_who_rate_more_extremely_change_only_the_ratings() -> None:
    """`scale_sigma` draws each user's sharpness from a stream of its own: pairs and truths stay
    as they were, 0 changes no bit, and users then differ in how extreme their ratings are."""
    plain, spread = generate(small()), generate(small(scale_sigma=2.0))
    pd.testing.assert_frame_equal(generate(small(scale_sigma=0.0)).comparisons, plain.comparisons)
    same = ["public_username", "video_a", "video_b", "criteria", "week_date"]
    pd.testing.assert_frame_equal(spread.comparisons[same], plain.comparisons[same])
    pd.testing.assert_frame_equal(spread.truth_global, plain.truth_global)
    assert not spread.comparisons.score.equals(plain.comparisons.score)

    def extremeness_spread(comparisons: pd.DataFrame) -> float:
        per_user = comparisons.score.abs().groupby(comparisons.public_username, observed=True)
        means = per_user.mean()[per_user.size() >= 20]
        return float(means.std())

    assert extremeness_spread(spread.comparisons) > 1.5 * extremeness_spread(plain.comparisons)


@pytest.mark.parametrize("d", [-6.0, -1.0, 0.0, 0.3, 2.5, 40.0])
def test_ratings_follow_the_continuous_bradley_terry_law(d: float) -> None:
    draws = sample_continuous_bt(np.full(20000, d), np.random.default_rng(0))
    assert draws.min() >= -1 and draws.max() <= 1

    def cdf(r: np.ndarray) -> np.ndarray:
        if d == 0:
            return (r + 1) / 2
        return np.expm1(d * (r + 1)) / np.expm1(2 * d)

    assert stats.kstest(draws, cdf).pvalue > 1e-3
    expected_mean = 0.0 if d == 0 else 1 / np.tanh(d) - 1 / d
    assert draws.mean() == pytest.approx(expected_mean, abs=0.02)


def test_better_video_b_gives_positive_scores() -> None:
    data = generate(small(n_comparisons=8000))
    comparisons = data.comparisons
    personal = truth_difference(comparisons, data.truth_individual, per_user=True)
    assert sign_agreement(comparisons.score.to_numpy(), personal) > 0.7
    assert np.corrcoef(personal, comparisons.score)[0, 1] > 0.5


@pytest.mark.parametrize("size", ["xs", "s"])
def test_sign_convention_matches_the_reference_sets(size: str) -> None:
    """The reference generator's comparisons agree with their truth as ours do with ours."""
    folder = REFERENCE / size
    if not folder.exists():
        pytest.skip("reference sets not available")
    comparisons = pd.read_csv(folder / "comparisons.csv")
    truth = pd.read_csv(folder / "truth_individual.csv")
    theirs = sign_agreement(
        comparisons.score.to_numpy(), truth_difference(comparisons, truth, per_user=True)
    )
    meta = json.loads((folder / "meta.json").read_text())["generator"]
    params = small(
        n_users=meta.get("users") or len(truth.public_username.unique()),
        n_videos=100 if size == "xs" else 1000,
        n_comparisons=len(comparisons),
        indiv_noise=meta["indiv_noise"],
        sharpness=meta["sharpness"],
        pop_sigma=meta["pop_sigma"],
        act_sigma=meta["act_sigma"],
    )
    ours_data = generate(params)
    ours = sign_agreement(
        ours_data.comparisons.score.to_numpy(),
        truth_difference(ours_data.comparisons, ours_data.truth_individual, per_user=True),
    )
    assert theirs > 0.65 and ours > 0.65
    assert abs(theirs - ours) < 0.06


def test_reversing_adversaries_disagree_with_the_truth() -> None:
    data = generate(small(n_users=60, n_comparisons=12000, fraction_adversarial=0.25))
    assert len(data.adversarial_users) == 15
    comparisons = data.comparisons
    global_difference = truth_difference(comparisons, data.truth_global, per_user=False)
    adversarial = comparisons.public_username.isin(data.adversarial_users).to_numpy()
    scores = comparisons.score.to_numpy()
    assert sign_agreement(scores[adversarial], global_difference[adversarial]) < 0.35
    assert sign_agreement(scores[~adversarial], global_difference[~adversarial]) > 0.65


def test_promoting_adversaries_push_their_targets() -> None:
    data = generate(small(fraction_adversarial=0.2, adversarial_mode="promote", n_targets=3))
    comparisons = data.comparisons
    adversarial = comparisons.public_username.isin(data.adversarial_users)
    target_b = comparisons.video_b.isin(data.target_videos)
    target_a = comparisons.video_a.isin(data.target_videos)
    pushing = adversarial & (target_a ^ target_b)
    assert pushing.sum() > 0.3 * adversarial.sum()
    # The target side wins: positive when it is video_b, negative when it is video_a.
    towards_target = np.where(target_b[pushing], 1, -1) * comparisons.score[pushing]
    assert (towards_target > 0).mean() > 0.9


def test_write_produces_the_public_format(tmp_path: Path) -> None:
    from ml.data import read_comparisons

    data = generate(small(criteria=["largely_recommended", "importance"]))
    data.write(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert SyntheticParams.model_validate(meta["generator"]) == data.params
    assert meta["n_rows"] == len(data.comparisons)
    written = pd.read_csv(tmp_path / "comparisons.csv")
    assert list(written.columns) == list(data.comparisons.columns)
    assert written.score.tolist() == data.comparisons.score.tolist()
    truth = pd.read_csv(tmp_path / "truth_individual.csv")
    assert list(truth.columns) == ["public_username", "video", "criteria", "true_score"]
    np.testing.assert_allclose(truth.true_score, data.truth_individual.true_score, atol=1e-6)
    dataset = read_comparisons(tmp_path / "comparisons.csv")
    assert dataset.n_comparisons == len(data.comparisons)


def test_split_heldout_is_a_partition_keeping_criteria_together() -> None:
    comparisons = generate(small(criteria=["largely_recommended", "importance"])).comparisons
    kept, held = split_heldout(comparisons, 0.2, seed=1)
    assert len(kept) + len(held) == len(comparisons)
    pair = ["public_username", "video_a", "video_b"]
    held_pairs = set(map(tuple, held[pair].astype(str).to_numpy()))
    kept_pairs = set(map(tuple, kept[pair].astype(str).to_numpy()))
    assert not held_pairs & kept_pairs
    assert 0.15 < len(held_pairs) / 4000 < 0.25


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one comparison per user"):
        SyntheticParams(n_users=100, n_videos=50, n_comparisons=10)
    with pytest.raises(ValueError):
        SyntheticParams(fraction_adversarial=1.5)
    with pytest.raises(ValueError):
        SyntheticParams(bogus=1)  # type: ignore[call-arg]
