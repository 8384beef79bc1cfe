"""One evaluation of a sweep: train on a fold's training part, then score the result."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml.config import LicchaviConfig
from ml.licchavi import CriterionResult, EpochReport, train_criterion
from ml.metrics import bt_brier, bt_log_loss, global_metrics, local_metrics, sign_accuracy
from ml.sweep.datasets import FrozenDataset

# Per-epoch values kept in a trial's history: the loss terms, their sum, and the gradient norm.
HISTORY_TERMS = ("fit", "s", "gen", "reg", "grad_norm")


@dataclass
class UnitOutcome:
    metrics: dict[str, float]
    history: dict[str, list[float | None]] = field(default_factory=dict)


class HistoryRecorder:
    """Collects the loss terms of every epoch, and forwards each report to `on_epoch`."""

    def __init__(self, on_epoch: Callable[[EpochReport], bool | None] | None = None) -> None:
        self.on_epoch = on_epoch
        self.history: dict[str, list[float | None]] = {}

    def __call__(self, report: EpochReport) -> bool | None:
        row = report.history_row
        terms = {name: row[name] for name in HISTORY_TERMS if name in row}
        if all(name in row for name in ("fit", "s", "gen", "reg")):
            terms["loss"] = row["fit"] + row["s"] + row["gen"] + row["reg"]
        for name, value in terms.items():
            self.history.setdefault(name, []).append(_finite(value))
        return None if self.on_epoch is None else self.on_epoch(report)


def _finite(value: Any) -> float | None:
    """The value, or None (JSON null) where it is not a finite number."""
    number = float(value)
    return number if math.isfinite(number) else None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def evaluate_unit(
    dataset: FrozenDataset,
    config: LicchaviConfig,
    *,
    test_fold: int,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
) -> UnitOutcome:
    """Train on every comparison outside `test_fold`, then measure on it (and on the truth).

    Held-out predictions use global scores, d = ρ_b − ρ_a, with an unseen video at 0, the mean
    its regularisation pulls it to; `heldout_coverage` is the share of tested comparisons whose
    two videos were both trained on. The local accuracy uses the rater's own θ_b − θ_a where
    they scored both videos in training, ρ otherwise.
    """
    test = dataset.test_mask(test_fold)
    train = dataset.comparisons.subset(~test)
    recorder = HistoryRecorder(on_epoch)
    started = time.perf_counter()
    result = train_criterion(train, config, callback=recorder)
    seconds = time.perf_counter() - started
    metrics: dict[str, float] = {
        "training_seconds": seconds,
        "epochs": float(result.epochs),
        "peak_memory_bytes": float(peak_rss_bytes()),
        "n_parameters": float(len(result.global_scores) + len(result.local_scores) + len(result.s)),
        "n_train": float(train.n_comparisons),
        "n_test": float(test.sum()),
    }
    metrics |= _heldout(result, dataset, test)
    if dataset.truth_global is not None:
        scores = pd.DataFrame(
            {"video": result.video_ids.astype(str), "score": result.global_scores}
        )
        truth = global_metrics(scores, dataset.truth_global)
        metrics |= {name: truth[name] for name in ("spearman", "kendall", "top_k_precision")}
    if dataset.truth_individual is not None:
        local = pd.DataFrame(
            {
                "public_username": result.user_ids[result.local_user_index].astype(str),
                "video": result.video_ids[result.local_video_index].astype(str),
                "score": result.local_scores,
            }
        )
        metrics["user_spearman"] = local_metrics(local, dataset.truth_individual)["user_spearman"]
    # A metric that cannot be computed (no spread, no held-out rows) is left out: JSON has no
    # NaN, and a missing value is what the queries and statistics treat as "not measured".
    finite = {name: float(value) for name, value in metrics.items() if math.isfinite(value)}
    return UnitOutcome(metrics=finite, history=recorder.history)


def _heldout(result: CriterionResult, dataset: FrozenDataset, test: np.ndarray) -> dict[str, float]:
    if not test.any():
        return {}
    data = dataset.comparisons
    # The trained subset re-indexed videos; map them back to the full dataset's indices.
    global_score = np.zeros(data.n_videos)
    trained = np.zeros(data.n_videos, dtype=bool)
    position = pd.Index(data.video_ids).get_indexer(result.video_ids)
    global_score[position] = result.global_scores
    trained[position] = True
    video_a, video_b = data.video_a_index[test], data.video_b_index[test]
    ratings = data.ratings[test]
    d = global_score[video_b] - global_score[video_a]

    user_position = pd.Index(data.user_ids).get_indexer(result.user_ids)
    local_key = (
        user_position[result.local_user_index].astype(np.int64) * data.n_videos
        + position[result.local_video_index]
    )
    local = pd.Series(result.local_scores, index=local_key)
    users = data.user_index[test].astype(np.int64)
    theta_a = local.reindex(users * data.n_videos + video_a).to_numpy()
    theta_b = local.reindex(users * data.n_videos + video_b).to_numpy()
    personal = ~(np.isnan(theta_a) | np.isnan(theta_b))
    local_d = np.where(personal, theta_b - theta_a, d)
    return {
        "heldout_accuracy": sign_accuracy(d, ratings),
        "heldout_local_accuracy": sign_accuracy(local_d, ratings),
        "heldout_log_loss": bt_log_loss(d, ratings),
        "heldout_brier": bt_brier(d, ratings),
        "heldout_coverage": float(np.mean(trained[video_a] & trained[video_b])),
    }
