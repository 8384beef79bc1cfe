"""Frozen sweep data: fold assignment, byte round trips, fingerprints, and one evaluation."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from ml.config import LicchaviConfig
from ml.data import ComparisonDataset, CriterionComparisons
from ml.sweep.datasets import FrozenDataset, assign_folds, freeze_holdout, freeze_synthetic
from ml.sweep.evaluate import HISTORY_TERMS, evaluate_unit
from ml.sweep.spec import COST_METRICS, HELDOUT_METRICS, TRUTH_METRICS
from ml.synthetic import SyntheticParams, generate

CRITERION = "largely_recommended"
SMALL: dict[str, object] = {"n_users": 20, "n_videos": 60, "comps_per_video": 3}
FAST = LicchaviConfig(solver="faithful", epochs=15, compute_uncertainty=False)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    params = SyntheticParams(n_users=30, n_videos=50, comps_per_video=6, seed=5)
    return generate(params).comparisons.astype(
        {"public_username": str, "video_a": str, "video_b": str, "criteria": str}
    )


@pytest.fixture(scope="module")
def comparisons(frame: pd.DataFrame) -> CriterionComparisons:
    return ComparisonDataset.from_frame(frame).criteria[CRITERION]


def spread(sizes: np.ndarray) -> int:
    return int(sizes.max() - sizes.min())


def test_a_split_by_comparison_is_balanced_and_seeded(comparisons: CriterionComparisons) -> None:
    fold_a, fold_b = assign_folds(comparisons, folds=5, split_by="comparison", seed=3)
    assert np.array_equal(fold_a, fold_b)
    sizes = np.bincount(fold_a, minlength=5)
    assert len(sizes) == 5 and sizes.sum() == comparisons.n_comparisons and spread(sizes) <= 1
    again, _ = assign_folds(comparisons, folds=5, split_by="comparison", seed=3)
    other, _ = assign_folds(comparisons, folds=5, split_by="comparison", seed=4)
    assert np.array_equal(again, fold_a) and not np.array_equal(other, fold_a)


def test_a_split_by_user_keeps_each_user_in_one_fold(comparisons: CriterionComparisons) -> None:
    fold_a, fold_b = assign_folds(comparisons, folds=4, split_by="user", seed=1)
    assert np.array_equal(fold_a, fold_b)
    fold_of_user: dict[int, set[int]] = {}
    for user, fold in zip(comparisons.user_index, fold_a, strict=True):
        fold_of_user.setdefault(int(user), set()).add(int(fold))
    assert all(len(folds) == 1 for folds in fold_of_user.values())
    users_per_fold = np.bincount([next(iter(f)) for f in fold_of_user.values()], minlength=4)
    assert spread(users_per_fold) <= 1
    again, _ = assign_folds(comparisons, folds=4, split_by="user", seed=1)
    other, _ = assign_folds(comparisons, folds=4, split_by="user", seed=2)
    assert np.array_equal(again, fold_a) and not np.array_equal(other, fold_a)


def test_a_split_by_video_never_trains_on_a_held_out_video(
    comparisons: CriterionComparisons,
) -> None:
    fold_a, fold_b = assign_folds(comparisons, folds=3, split_by="video", seed=0)
    assert not np.array_equal(fold_a, fold_b)
    fold_of_video = np.full(comparisons.n_videos, -1)
    fold_of_video[comparisons.video_a_index] = fold_a
    fold_of_video[comparisons.video_b_index] = fold_b
    # Every side of every comparison agrees with its video's single fold.
    assert np.array_equal(fold_of_video[comparisons.video_a_index], fold_a)
    assert np.array_equal(fold_of_video[comparisons.video_b_index], fold_b)
    assert spread(np.bincount(fold_of_video[fold_of_video >= 0], minlength=3)) <= 1
    frozen = FrozenDataset(comparisons, fold_a, fold_b)
    for fold in range(3):
        held_out = np.flatnonzero(fold_of_video == fold)
        touches = np.isin(comparisons.video_a_index, held_out) | np.isin(
            comparisons.video_b_index, held_out
        )
        test = frozen.test_mask(fold)
        assert np.array_equal(test, touches) and test.any()
        train = comparisons.subset(~test)
        assert not set(train.video_ids) & set(comparisons.video_ids[held_out])
    again = assign_folds(comparisons, folds=3, split_by="video", seed=0)
    assert np.array_equal(again[0], fold_a) and np.array_equal(again[1], fold_b)


def test_an_unknown_split_is_refused(comparisons: CriterionComparisons) -> None:
    with pytest.raises(ValueError, match="split_by"):
        assign_folds(comparisons, folds=3, split_by="week", seed=0)


def test_freeze_holdout_refuses_what_it_cannot_split(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="'reliability'"):
        freeze_holdout(frame, criterion="reliability", folds=3, split_by="comparison", seed=0)
    tiny = frame[frame["criteria"] == CRITERION].head(2)
    with pytest.raises(ValueError, match="2 comparisons cannot make 3 folds"):
        freeze_holdout(tiny, criterion=CRITERION, folds=3, split_by="comparison", seed=0)


def test_bytes_round_trip_keeps_data_split_and_truth() -> None:
    frozen = freeze_synthetic(SMALL, seed=2, criterion=CRITERION, heldout_fraction=0.2)
    assert frozen.truth_global is not None and frozen.truth_individual is not None
    back = FrozenDataset.from_bytes(frozen.to_bytes())
    assert back.fingerprint == frozen.fingerprint
    assert back.split_fingerprint == frozen.split_fingerprint
    assert np.array_equal(back.fold_a, frozen.fold_a) and np.array_equal(back.fold_b, frozen.fold_b)
    assert np.array_equal(back.comparisons.ratings, frozen.comparisons.ratings)
    assert back.truth_global is not None and back.truth_individual is not None
    pd.testing.assert_frame_equal(
        back.truth_global.reset_index(drop=True),
        frozen.truth_global.reset_index(drop=True),
        check_dtype=False,
    )
    pd.testing.assert_frame_equal(
        back.truth_individual.reset_index(drop=True),
        frozen.truth_individual.reset_index(drop=True),
        check_dtype=False,
    )


def test_live_data_round_trips_without_truth(frame: pd.DataFrame) -> None:
    frozen = freeze_holdout(frame, criterion=CRITERION, folds=4, split_by="video", seed=9)
    back = FrozenDataset.from_bytes(frozen.to_bytes())
    assert back.truth_global is None and back.truth_individual is None
    assert (back.fingerprint, back.split_fingerprint) == (
        frozen.fingerprint,
        frozen.split_fingerprint,
    )
    assert list(back.comparisons.user_ids) == list(frozen.comparisons.user_ids)


def test_trusted_users_are_frozen_with_live_data(frame: pd.DataFrame) -> None:
    """A holdout sweep trains with the voting rights a service run would give: the trusted
    users are part of the frozen data and of its fingerprint."""
    plain = freeze_holdout(frame, criterion=CRITERION, folds=4, split_by="video", seed=9)
    users = list(plain.comparisons.user_ids)
    trusted = freeze_holdout(
        frame, criterion=CRITERION, folds=4, split_by="video", seed=9, trusted=users[:2]
    )
    assert plain.comparisons.trusted is None
    assert trusted.comparisons.trusted is not None
    assert list(trusted.comparisons.trusted) == [user in users[:2] for user in users]
    back = FrozenDataset.from_bytes(trusted.to_bytes())
    np.testing.assert_array_equal(back.comparisons.trusted, trusted.comparisons.trusted)
    assert back.fingerprint == trusted.fingerprint != plain.fingerprint
    # Unknown users mark nobody: the data and its fingerprint are those without trust.
    nobody = freeze_holdout(
        frame, criterion=CRITERION, folds=4, split_by="video", seed=9, trusted=["nobody"]
    )
    assert nobody.fingerprint == plain.fingerprint


def test_fingerprints_follow_ratings_and_splits(comparisons: CriterionComparisons) -> None:
    fold_a, fold_b = assign_folds(comparisons, folds=5, split_by="comparison", seed=0)
    frozen = FrozenDataset(comparisons, fold_a, fold_b)
    ratings = comparisons.ratings.copy()
    ratings[7] = -ratings[7] if ratings[7] else 0.5
    rerated = FrozenDataset(dataclasses.replace(comparisons, ratings=ratings), fold_a, fold_b)
    assert rerated.fingerprint != frozen.fingerprint
    assert rerated.split_fingerprint != frozen.split_fingerprint
    other_a, other_b = assign_folds(comparisons, folds=5, split_by="comparison", seed=1)
    resplit = FrozenDataset(comparisons, other_a, other_b)
    assert resplit.fingerprint == frozen.fingerprint
    assert resplit.split_fingerprint != frozen.split_fingerprint


def test_freeze_synthetic_holds_out_about_the_fraction_asked() -> None:
    generator = {**SMALL, "comps_per_video": 6}
    frozen = freeze_synthetic(generator, seed=4, criterion=CRITERION, heldout_fraction=0.25)
    held_out = float(np.mean(frozen.test_mask(1)))
    assert 0.15 < held_out < 0.35
    assert np.array_equal(frozen.fold_a, frozen.fold_b) and set(frozen.fold_a) == {0, 1}
    same = freeze_synthetic(generator, seed=4, criterion=CRITERION, heldout_fraction=0.25)
    assert same.to_bytes() == frozen.to_bytes()
    other = freeze_synthetic(generator, seed=5, criterion=CRITERION, heldout_fraction=0.25)
    assert other.fingerprint != frozen.fingerprint
    nothing = freeze_synthetic(generator, seed=4, criterion=CRITERION, heldout_fraction=0.0)
    assert not nothing.test_mask(1).any()


def test_freeze_synthetic_generates_the_asked_criterion() -> None:
    frozen = freeze_synthetic(SMALL, seed=1, criterion="importance", heldout_fraction=0.1)
    assert frozen.comparisons.criterion == "importance" and frozen.comparisons.n_comparisons > 0
    assert frozen.truth_global is not None and len(frozen.truth_global) == SMALL["n_videos"]


def test_evaluate_unit_records_the_documented_metrics() -> None:
    frozen = freeze_synthetic(SMALL, seed=3, criterion=CRITERION, heldout_fraction=0.2)
    outcome = evaluate_unit(frozen, FAST, test_fold=1)
    metrics = outcome.metrics
    expected = {*HELDOUT_METRICS, *TRUTH_METRICS, *COST_METRICS, "n_train", "n_test"}
    assert set(metrics) == expected
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    for name in ("heldout_accuracy", "heldout_local_accuracy", "heldout_coverage"):
        assert 0 <= metrics[name] <= 1, name
    for name in ("spearman", "kendall", "user_spearman"):
        assert -1 <= metrics[name] <= 1, name
    assert metrics["heldout_log_loss"] > 0 and 0 <= metrics["heldout_brier"] <= 1
    test = frozen.test_mask(1)
    assert metrics["n_test"] == test.sum() and metrics["n_train"] == (~test).sum()
    assert metrics["n_train"] + metrics["n_test"] == frozen.comparisons.n_comparisons
    assert metrics["epochs"] == FAST.epochs and metrics["training_seconds"] > 0
    assert set(outcome.history) == {*HISTORY_TERMS, "loss"}
    assert all(len(values) == metrics["epochs"] for values in outcome.history.values())
    loss = outcome.history["loss"]
    assert loss[0] == pytest.approx(
        sum(outcome.history[term][0] for term in ("fit", "s", "gen", "reg"))
    )


def test_evaluate_unit_finds_the_truth_of_an_easy_set() -> None:
    generator: dict[str, object] = {
        "n_users": 20,
        "n_videos": 40,
        "comps_per_video": 8,
        "indiv_noise": 0.05,
    }
    frozen = freeze_synthetic(generator, seed=1, criterion=CRITERION, heldout_fraction=0.2)
    metrics = evaluate_unit(
        frozen, LicchaviConfig(solver="faithful", epochs=30, compute_uncertainty=False), test_fold=1
    ).metrics
    assert metrics["spearman"] > 0.5 and metrics["heldout_accuracy"] > 0.55


def test_evaluate_unit_on_a_video_fold_of_live_data(frame: pd.DataFrame) -> None:
    frozen = freeze_holdout(frame, criterion=CRITERION, folds=3, split_by="video", seed=2)
    seen: list[int] = []

    def on_epoch(report: object) -> None:
        seen.append(1)

    outcome = evaluate_unit(frozen, FAST, test_fold=0, on_epoch=on_epoch)
    metrics = outcome.metrics
    assert not set(TRUTH_METRICS) & set(metrics)
    assert metrics["n_test"] == frozen.test_mask(0).sum()
    # Held-out videos were never trained on, so no tested comparison has both sides trained.
    assert metrics["heldout_coverage"] == 0.0
    assert len(seen) == metrics["epochs"] == len(outcome.history["loss"])
