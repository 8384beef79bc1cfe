"""Metrics on cases small enough to compute by hand."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

from ml.metrics import (
    bt_brier,
    bt_log_likelihood,
    bt_log_loss,
    evaluate,
    global_metrics,
    heldout_metrics,
    kendall,
    mean_user_spearman,
    sign_accuracy,
    spearman,
    top_k_precision,
)


def test_spearman_and_kendall_by_hand() -> None:
    # Ranks (1, 2, 3) vs (1, 3, 2): Σd² = 2, ρ = 1 − 6·2 / (3·8) = 0.5.
    assert spearman(np.array([1.0, 2, 3]), np.array([10.0, 30, 20])) == pytest.approx(0.5)
    # Pairs: (1,2) concordant, (1,3) concordant, (2,3) discordant: τ = (2 − 1) / 3.
    assert kendall(np.array([1.0, 2, 3]), np.array([10.0, 30, 20])) == pytest.approx(1 / 3)
    assert spearman(np.array([3.0, 2, 1]), np.array([1.0, 2, 3])) == pytest.approx(-1)
    assert np.isnan(spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])))


def test_top_k_precision_by_hand() -> None:
    predicted = np.array([5.0, 4, 3, 2, 1])
    truth = np.array([5.0, 4, 1, 2, 3])
    assert top_k_precision(predicted, truth, 2) == 1.0
    # Predicted top 3 = {0, 1, 2}; true top 3 = {0, 1, 4}.
    assert top_k_precision(predicted, truth, 3) == pytest.approx(2 / 3)
    assert top_k_precision(predicted, truth, 10) == 1.0  # k capped at the number of videos


def test_mean_user_spearman_by_hand() -> None:
    users = np.array(["a", "a", "a", "b", "b", "c", "d", "d"])
    predicted = np.array([1.0, 2, 3, 1, 2, 5, 1, 2])
    truth = np.array([1.0, 3, 2, 2, 1, 5, 7, 7])
    # a: 0.5, b: −1; c has one video and d no spread in truth: both left out.
    mean, n_users = mean_user_spearman(users, predicted, truth)
    assert n_users == 2
    assert mean == pytest.approx(-0.25)


def test_mean_user_spearman_matches_scipy_per_user() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 600)
    predicted, truth = rng.normal(size=600), rng.normal(size=600)
    truth = truth + predicted * (users % 3)  # a different correlation per user
    expected = np.mean(
        [spearman(predicted[users == u], truth[users == u]) for u in np.unique(users)]
    )
    assert mean_user_spearman(users, predicted, truth)[0] == pytest.approx(expected)


def test_sign_accuracy_by_hand() -> None:
    difference = np.array([1.0, -1.0, 0.0, 2.0])
    scores = np.array([3.0, 2.0, 5.0, 0.0])
    # right, wrong, a tie counted half; the 0-rated comparison is left out.
    assert sign_accuracy(difference, scores) == pytest.approx(0.5)
    assert sign_accuracy(np.array([-2.0, 1.0]), np.array([-1.0, 4.0])) == 1.0


@pytest.mark.parametrize("d", [-30.0, -2.0, -1e-8, 0.0, 1e-7, 0.5, 5.0, 300.0])
def test_bt_density_integrates_to_one(d: float) -> None:
    total, _ = integrate.quad(
        lambda r: float(np.exp(bt_log_likelihood(np.array([d]), np.array([r]))[0])),
        -1,
        1,
        points=[1 - 1e-3, -1 + 1e-3],
        limit=200,
    )
    assert total == pytest.approx(1.0, rel=1e-6)


def test_bt_log_likelihood_values() -> None:
    # d = 2, r = 1: log(2·e² / (2 sinh 2)).
    expected = np.log(2 * np.exp(2.0) / (2 * np.sinh(2.0)))
    assert bt_log_likelihood(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(expected)
    # It is minus Licchavi's fit term f(t, r) = log(2 sinh t / t) + r t at t = −d.
    t, r = -0.7, 0.3
    fit = np.log(2 * np.sinh(t) / t) + r * t
    assert bt_log_likelihood(np.array([0.7]), np.array([r]))[0] == pytest.approx(-fit)
    assert bt_log_loss(np.zeros(3), np.array([-1.0, 0.2, 1.0])) == pytest.approx(np.log(2))


def test_bt_brier_uses_the_chance_that_b_wins() -> None:
    assert bt_brier(np.zeros(4), np.array([1.0, -0.5, 0.3, 0.0])) == pytest.approx(0.25)
    # P(r > 0 | d) under the density equals sigmoid(d).
    d = 1.3
    p_b, _ = integrate.quad(
        lambda r: float(np.exp(bt_log_likelihood(np.array([d]), np.array([r]))[0])), 0, 1
    )
    sigmoid = 1 / (1 + np.exp(-d))
    assert p_b == pytest.approx(sigmoid)
    assert bt_brier(np.array([d]), np.array([0.4])) == pytest.approx((sigmoid - 1) ** 2)


def test_global_metrics_align_by_video_id() -> None:
    scores = pd.DataFrame({"video": ["v3", "v1", "v2", "v9"], "score": [3.0, 1.0, 2.0, 0.0]})
    truth = pd.DataFrame({"video": ["v1", "v2", "v3"], "true_score": [0.1, 0.2, 0.3]})
    metrics = global_metrics(scores, truth, top_k=1)
    assert metrics["n_videos"] == 3
    assert metrics["spearman"] == pytest.approx(1.0)
    assert metrics["kendall"] == pytest.approx(1.0)
    assert metrics["top_k_precision"] == 1.0


def test_heldout_metrics_skip_unknown_videos() -> None:
    scores = pd.DataFrame({"video": ["a", "b", "c"], "score": [0.0, 1.0, 2.0]})
    heldout = pd.DataFrame(
        {
            "video_a": ["a", "c", "a", "zz"],
            "video_b": ["b", "b", "c", "a"],
            "score": [5, 4, -2, 3],
            "score_max": [10, 10, 10, 10],
        }
    )
    metrics = heldout_metrics(scores, heldout)
    assert metrics["heldout_n"] == 3
    # d = 1 (right), −1 (wrong), 2 (wrong).
    assert metrics["heldout_accuracy"] == pytest.approx(1 / 3)


def test_heldout_local_accuracy_uses_the_users_own_scores() -> None:
    scores = pd.DataFrame({"video": ["a", "b", "c"], "score": [0.0, 1.0, 2.0]})
    heldout = pd.DataFrame(
        {
            "public_username": ["u", "u", "w"],
            "video_a": ["a", "c", "a"],
            "video_b": ["b", "b", "c"],
            "score": [-5, 4, -2],
            "score_max": [10, 10, 10],
        }
    )
    # u ranks a above b above c; w has no personal scores.
    individual = pd.DataFrame(
        {"public_username": "u", "video": ["a", "b", "c"], "score": [2.0, 1.0, 0.0]}
    )
    metrics = heldout_metrics(scores, heldout, individual)
    # Global d: 1 (wrong), −1 (wrong), 2 (wrong); u's θ: −1 (right), 1 (right); w falls back.
    assert metrics["heldout_accuracy"] == 0.0
    assert metrics["heldout_local_n"] == 2
    assert metrics["heldout_local_accuracy"] == pytest.approx(2 / 3)


def test_evaluate_reads_the_written_files(tmp_path: Path) -> None:
    truth_dir, scores_dir = tmp_path / "truth", tmp_path / "scores"
    truth_dir.mkdir()
    scores_dir.mkdir()
    pd.DataFrame(
        {"video": ["v1", "v2", "v3"], "criteria": "main", "true_score": [1.0, 2.0, 3.0]}
    ).to_csv(truth_dir / "truth_global.csv", index=False)
    pd.DataFrame(
        {
            "public_username": ["u", "u", "u"],
            "video": ["v1", "v2", "v3"],
            "criteria": "main",
            "true_score": [1.0, 3.0, 2.0],
        }
    ).to_csv(truth_dir / "truth_individual.csv", index=False)
    pd.DataFrame(
        {
            "video": ["v1", "v2", "v3"],
            "criteria": "main",
            "score": [0.3, 0.1, 0.2],
            "uncertainty": 0.0,
            "n_comparisons": 2,
            "n_contributors": 1,
        }
    ).to_csv(scores_dir / "global_scores.csv", index=False)
    pd.DataFrame(
        {
            "public_username": "u",
            "video": ["v1", "v2", "v3"],
            "criteria": "main",
            "score": [1.0, 2.0, 3.0],
            "uncertainty": 0.0,
        }
    ).to_csv(scores_dir / "individual_scores.csv", index=False)
    report = evaluate(truth_dir, scores_dir, top_k=1)
    assert set(report) == {"main"}
    # Global ranks (3, 1, 2) vs (1, 2, 3): Σd² = 4 + 1 + 1 = 6, ρ = 1 − 36/24 = −0.5.
    assert report["main"]["spearman"] == pytest.approx(-0.5)
    assert report["main"]["top_k_precision"] == 0.0
    assert report["main"]["user_spearman"] == pytest.approx(0.5)
