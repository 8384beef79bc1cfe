"""Quality of scores against a ground truth and on held-out comparisons (vectorised numpy/scipy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ml.io import GLOBAL_SCORES_FILE, INDIVIDUAL_SCORES_FILE, read_scores

MIN_VIDEOS_PER_USER = 2
DEFAULT_TOP_K = 100


def spearman(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN under two points or no spread."""
    if len(predicted) < 2 or np.ptp(predicted) == 0 or np.ptp(truth) == 0:
        return float("nan")
    return float(stats.spearmanr(predicted, truth).statistic)


def kendall(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Kendall's tau-b (ties adjusted); NaN under two points or no spread."""
    if len(predicted) < 2 or np.ptp(predicted) == 0 or np.ptp(truth) == 0:
        return float("nan")
    return float(stats.kendalltau(predicted, truth).statistic)


def top_k_precision(predicted: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the k best videos by ``predicted`` that are among the k best by ``truth``.

    Ties at the k-th place are broken by position (stable sort), identically on both sides.
    """
    k = min(k, len(predicted))
    if k <= 0:
        return float("nan")
    best_predicted = np.argsort(-np.asarray(predicted), kind="stable")[:k]
    best_true = np.argsort(-np.asarray(truth), kind="stable")[:k]
    return float(np.intersect1d(best_predicted, best_true).size / k)


def mean_user_spearman(
    users: np.ndarray, predicted: np.ndarray, truth: np.ndarray
) -> tuple[float, int]:
    """Mean over users of the Spearman correlation between their predicted and true scores.

    Only users with at least two videos and some spread on both sides count; returns the mean
    and the number of users it averages. Computed for all users at once: ranks within each user
    (average ranks for ties), then Pearson correlation of the ranks from grouped sums.
    """
    frame = pd.DataFrame({"user": users, "predicted": predicted, "truth": truth})
    grouped = frame.groupby("user", sort=False)
    frame["rank_p"] = grouped["predicted"].rank(method="average")
    frame["rank_t"] = grouped["truth"].rank(method="average")
    size = grouped["predicted"].transform("size").to_numpy()
    frame = frame[size >= MIN_VIDEOS_PER_USER]
    grouped = frame.groupby("user", sort=False)
    centred_p = frame["rank_p"] - grouped["rank_p"].transform("mean")
    centred_t = frame["rank_t"] - grouped["rank_t"].transform("mean")
    sums = (
        pd.DataFrame(
            {
                "user": frame["user"],
                "pt": centred_p * centred_t,
                "pp": centred_p**2,
                "tt": centred_t**2,
            }
        )
        .groupby("user", sort=False)[["pt", "pp", "tt"]]
        .sum()
    )
    usable = (sums["pp"] > 0) & (sums["tt"] > 0)
    sums = sums[usable]
    if sums.empty:
        return float("nan"), 0
    correlations: pd.Series = sums["pt"] / np.sqrt(sums["pp"] * sums["tt"])
    return float(correlations.mean()), len(correlations)


def sign_accuracy(predicted_difference: np.ndarray, scores: np.ndarray) -> float:
    """Share of comparisons whose preferred side is predicted.

    predicted_difference is (score of video_b) − (score of video_a), so positive predicts a
    positive rating. Comparisons rated exactly 0 have no side to predict and are left out; a
    predicted difference of exactly 0 counts as half right.
    """
    predicted_difference = np.asarray(predicted_difference, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    rated = scores != 0
    if not rated.any():
        return float("nan")
    agreement = np.sign(predicted_difference[rated]) * np.sign(scores[rated])
    return float(np.mean((agreement + 1.0) / 2.0))


def bt_log_likelihood(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log of the continuous Bradley–Terry density of r in [-1, 1] given d = ρ_b − ρ_a.

    p(r | d) = d·exp(r·d) / (2 sinh d), and p = 1/2 at d = 0. This is minus Licchavi's fit term
    f(t, r) at t = −d with s = 1. Written with |d| so that large |d| does not overflow:
    log p = log|d| − log(1 − e^{−2|d|}) + r·d − |d|.
    """
    d = np.asarray(d, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    magnitude = np.abs(d)
    small = magnitude < 1e-6
    safe = np.where(small, 1.0, magnitude)
    exact = np.log(safe) - np.log(-np.expm1(-2.0 * safe)) + r * d - safe
    # Second-order expansion around d = 0: log(1/2) + r·d − d²/6.
    return np.where(small, -np.log(2.0) + r * d - d**2 / 6.0, exact)


def bt_log_loss(d: np.ndarray, r: np.ndarray) -> float:
    """Mean negative log-density of the observed ratings under continuous Bradley–Terry.

    A density, not a probability: it is negative when predictions are sharp and right. Uniform
    predictions (d = 0) score log 2 ≈ 0.693.
    """
    return float(-np.mean(bt_log_likelihood(d, r))) if len(d) else float("nan")


def bt_brier(d: np.ndarray, r: np.ndarray) -> float:
    """Brier score of the predicted chance that video_b wins, over comparisons not rated 0.

    Under continuous Bradley–Terry P(r > 0 | d) = (e^d − 1)/(e^d − e^{−d}) = 1/(1 + e^{−d}),
    so this is mean((sigmoid(d) − [r > 0])²). Uniform predictions score 0.25.
    """
    d = np.asarray(d, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    rated = r != 0
    if not rated.any():
        return float("nan")
    # The logistic function through tanh: no overflow for large |d|.
    probability_b = 0.5 * (1.0 + np.tanh(d[rated] / 2.0))
    return float(np.mean((probability_b - (r[rated] > 0)) ** 2))


def global_metrics(
    scores: pd.DataFrame, truth: pd.DataFrame, top_k: int | None = None
) -> dict[str, float]:
    """Rank agreement of global scores with the truth, over the videos present in both.

    ``scores`` has columns video, score; ``truth`` video, true_score (one criterion each).
    top_k defaults to min(100, n_videos // 10), at least 1.
    """
    joined = scores[["video", "score"]].merge(truth[["video", "true_score"]], on="video")
    predicted = joined["score"].to_numpy(np.float64)
    true = joined["true_score"].to_numpy(np.float64)
    k = top_k if top_k is not None else max(1, min(DEFAULT_TOP_K, len(joined) // 10))
    return {
        "n_videos": float(len(joined)),
        "spearman": spearman(predicted, true),
        "kendall": kendall(predicted, true),
        "top_k": float(k),
        "top_k_precision": top_k_precision(predicted, true, k),
    }


def local_metrics(scores: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Mean per-user Spearman of local scores (public_username, video, score) vs true_score."""
    keys = ["public_username", "video"]
    joined = scores[[*keys, "score"]].merge(truth[[*keys, "true_score"]], on=keys)
    mean, n_users = mean_user_spearman(
        joined["public_username"].to_numpy(),
        joined["score"].to_numpy(np.float64),
        joined["true_score"].to_numpy(np.float64),
    )
    return {"user_spearman": mean, "n_users": float(n_users)}


def heldout_metrics(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame,
    individual_scores: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Sign accuracy, log loss and Brier of global scores on comparisons not trained on.

    d = ρ_b − ρ_a with the user scale s = 1; comparisons involving a video without a global
    score are left out (``heldout_n`` counts those kept). With ``individual_scores``
    (public_username, video, score), ``heldout_local_accuracy`` predicts from the user's own
    θ_b − θ_a where the user has scored both videos, and from ρ_b − ρ_a otherwise
    (``heldout_local_n`` counts the comparisons where θ was used).
    """
    rho_a = _lookup(scores["video"], scores["score"], comparisons["video_a"])
    rho_b = _lookup(scores["video"], scores["score"], comparisons["video_b"])
    known = ~(np.isnan(rho_a) | np.isnan(rho_b))
    score_max = (
        comparisons["score_max"].to_numpy(np.float64)
        if "score_max" in comparisons
        else np.full(len(comparisons), 10.0)
    )
    r = comparisons["score"].to_numpy(np.float64) / score_max
    d = rho_b - rho_a
    report = {
        "heldout_n": float(known.sum()),
        "heldout_accuracy": sign_accuracy(d[known], r[known]),
        "heldout_log_loss": bt_log_loss(d[known], r[known]),
        "heldout_brier": bt_brier(d[known], r[known]),
    }
    if individual_scores is not None:
        user_of = individual_scores["public_username"].astype(str)
        pair_keys = user_of + "\0" + individual_scores["video"].astype(str)
        heldout_user = comparisons["public_username"].astype(str)
        theta_a = _lookup(
            pair_keys, individual_scores["score"], heldout_user + "\0" + comparisons["video_a"]
        )
        theta_b = _lookup(
            pair_keys, individual_scores["score"], heldout_user + "\0" + comparisons["video_b"]
        )
        personal = ~(np.isnan(theta_a) | np.isnan(theta_b)) & known
        local_d = np.where(personal, theta_b - theta_a, d)
        report["heldout_local_n"] = float(personal.sum())
        report["heldout_local_accuracy"] = sign_accuracy(local_d[known], r[known])
    return report


def _lookup(keys: pd.Series, values: pd.Series, wanted: pd.Series) -> np.ndarray:
    """values[keys == wanted] for each wanted key, NaN where absent."""
    table = pd.Series(values.to_numpy(np.float64), index=keys.astype(str).to_numpy())
    return table.reindex(wanted.astype(str).to_numpy()).to_numpy(np.float64)


def evaluate(
    truth_dir: str | Path,
    scores_dir: str | Path,
    heldout: str | Path | None = None,
    top_k: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Every metric, per criterion, from the CSVs written by ``generate`` and ``train``.

    truth_dir holds truth_global.csv (and optionally truth_individual.csv); scores_dir holds
    global_scores.csv (and optionally individual_scores.csv); heldout is a comparisons CSV.
    """
    truth_dir, scores_dir = Path(truth_dir), Path(scores_dir)
    truth_global = _read_truth(truth_dir / "truth_global.csv")
    global_scores = read_scores(scores_dir, GLOBAL_SCORES_FILE)
    truth_individual = (
        _read_truth(truth_dir / "truth_individual.csv")
        if (truth_dir / "truth_individual.csv").exists()
        else None
    )
    individual_scores = (
        read_scores(scores_dir, INDIVIDUAL_SCORES_FILE)
        if (scores_dir / INDIVIDUAL_SCORES_FILE).exists()
        else None
    )
    heldout_frame = (
        pd.read_csv(
            heldout,
            dtype={"public_username": str, "video_a": str, "video_b": str, "criteria": str},
        )
        if heldout is not None
        else None
    )
    if heldout_frame is not None:
        needed = ["video_a", "video_b", "criteria", "score"]
        if individual_scores is not None:
            needed.append("public_username")
        missing = [column for column in needed if column not in heldout_frame.columns]
        if missing:
            raise ValueError(f"{heldout} lacks column(s) {', '.join(missing)}")

    report: dict[str, dict[str, Any]] = {}
    for criterion, scores in global_scores.groupby("criteria", sort=True):
        name = str(criterion)
        row: dict[str, Any] = global_metrics(
            scores, truth_global[truth_global["criteria"] == name], top_k
        )
        if truth_individual is not None and individual_scores is not None:
            row |= local_metrics(
                individual_scores[individual_scores["criteria"] == name],
                truth_individual[truth_individual["criteria"] == name],
            )
        if heldout_frame is not None:
            row |= heldout_metrics(
                scores,
                heldout_frame[heldout_frame["criteria"] == name],
                None
                if individual_scores is None
                else individual_scores[individual_scores["criteria"] == name],
            )
        report[name] = row
    return report


def _read_truth(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"video": str, "public_username": str, "criteria": str})
