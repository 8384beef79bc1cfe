"""Solver measurements: held-out comparison accuracy, ranking vs truth, warm-start cost.

Run as `python -m ml.licchavi.evaluation heldout|warm-start ...` (see docs/solvers.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.config import LicchaviConfig, load_config
from ml.data import CriterionComparisons, read_comparisons
from ml.licchavi.trainer import CriterionResult, train_criterion


def sign_accuracy(predicted: np.ndarray, ratings: np.ndarray) -> float:
    """Share of non-neutral comparisons whose preferred side the prediction gets right.

    predicted is score(b) − score(a); a tie (e.g. two unseen videos) counts as half right.
    """
    decided = ratings != 0
    agree = np.sign(predicted[decided]) == np.sign(ratings[decided])
    tie = predicted[decided] == 0
    return float(np.mean(np.where(tie, 0.5, agree.astype(float))))


@dataclass(frozen=True)
class HeldoutScore:
    solver: str
    global_accuracy: float  # predictions from global scores
    local_accuracy: float  # from the rater's own local scores when they have both videos
    folds: int


def _predictions(
    result: CriterionResult, data: CriterionComparisons, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    global_scores = pd.Series(result.global_scores, index=result.video_ids)
    video_a = data.video_ids[data.video_a_index[test]]
    video_b = data.video_ids[data.video_b_index[test]]
    from_global = (
        global_scores.reindex(video_b).fillna(0).to_numpy()
        - global_scores.reindex(video_a).fillna(0).to_numpy()
    )
    local_scores = pd.Series(
        result.local_scores,
        index=pd.MultiIndex.from_arrays(
            [result.user_ids[result.local_user_index], result.video_ids[result.local_video_index]]
        ),
    )
    users = data.user_ids[data.user_index[test]]
    local_a = local_scores.reindex(pd.MultiIndex.from_arrays([users, video_a])).to_numpy()
    local_b = local_scores.reindex(pd.MultiIndex.from_arrays([users, video_b])).to_numpy()
    has_both = ~(np.isnan(local_a) | np.isnan(local_b))
    from_local = np.where(has_both, local_b - local_a, from_global)
    return from_global, from_local


def heldout_accuracy(
    data: CriterionComparisons,
    config: LicchaviConfig,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
) -> HeldoutScore:
    """k-fold by comparison, repeated with different splits; mean sign accuracy on held-out."""
    global_scores, local_scores = [], []
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        fold_of = rng.integers(0, folds, size=data.n_comparisons)
        for fold in range(folds):
            test = fold_of == fold
            result = train_criterion(data.subset(~test), config)
            from_global, from_local = _predictions(result, data, test)
            ratings = data.ratings[test]
            global_scores.append(sign_accuracy(from_global, ratings))
            local_scores.append(sign_accuracy(from_local, ratings))
    return HeldoutScore(
        config.solver, float(np.mean(global_scores)), float(np.mean(local_scores)), folds * repeats
    )


def spearman_vs_truth(result: CriterionResult, truth: pd.Series) -> float:
    """Rank correlation of the global scores with the true scores (common videos)."""
    scores = pd.Series(result.global_scores, index=result.video_ids)
    common = scores.index.intersection(truth.index)
    return float(scores[common].corr(truth[common], method="spearman"))


@dataclass(frozen=True)
class WarmStartCost:
    solver: str
    cold_epochs: int
    warm_epochs: int
    cold_seconds: float
    warm_seconds: float
    max_score_gap: float  # max |global score (warm) − global score (cold)|
    cold_accuracy: float  # held-out global sign accuracy
    warm_accuracy: float
    cold_spearman: float | None  # against the truth, when given
    warm_spearman: float | None


def warm_start_cost(
    data: CriterionComparisons,
    config: LicchaviConfig,
    new_fraction: float = 0.01,
    seed: int = 0,
    truth: pd.Series | None = None,
    heldout_fraction: float = 0.1,
) -> WarmStartCost:
    """Hold out `heldout_fraction` of the comparisons; train on the rest but `new_fraction`, then
    on the whole rest: cold, and warm-started from the first run; score both on the held-out."""
    rng = np.random.default_rng(seed)
    test = rng.random(data.n_comparisons) < heldout_fraction
    arrived_later = rng.random(data.n_comparisons) < new_fraction
    earlier = train_criterion(data.subset(~test & ~arrived_later), config)
    started = time.perf_counter()
    cold = train_criterion(data.subset(~test), config)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    warm = train_criterion(data.subset(~test), config, initial_state=earlier.state)
    warm_seconds = time.perf_counter() - started
    ratings = data.ratings[test]
    return WarmStartCost(
        config.solver,
        cold.epochs,
        warm.epochs,
        cold_seconds,
        warm_seconds,
        float(np.abs(cold.global_scores - warm.global_scores).max()),
        sign_accuracy(_predictions(cold, data, test)[0], ratings),
        sign_accuracy(_predictions(warm, data, test)[0], ratings),
        None if truth is None else spearman_vs_truth(cold, truth),
        None if truth is None else spearman_vs_truth(warm, truth),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.licchavi.evaluation")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("heldout", "warm-start"):
        command = commands.add_parser(name)
        command.add_argument("comparisons", help="comparisons CSV or Tournesol export .zip")
        command.add_argument("--criterion", default="largely_recommended")
        command.add_argument("--solvers", default="faithful,converged")
        command.add_argument("--seed", type=int, default=0)
    heldout = commands.choices["heldout"]
    heldout.add_argument("--folds", type=int, default=5)
    heldout.add_argument("--repeats", type=int, default=1)
    warm = commands.choices["warm-start"]
    warm.add_argument("--new-fraction", type=float, default=0.01)
    warm.add_argument("--set", action="append", default=[], help="key=value config override")
    for command in (heldout, warm):
        command.add_argument("--truth", help="truth_global.csv (video, true_score) for Spearman")
    args = parser.parse_args(argv)

    data = read_comparisons(args.comparisons).criteria[args.criterion]
    print(
        f"{args.comparisons} [{args.criterion}]: {data.n_comparisons} comparisons, "
        f"{data.n_users} users, {data.n_videos} videos"
    )
    for solver in args.solvers.split(","):
        overrides = getattr(args, "set", [])
        config = load_config(None, [f"solver={solver}", "compute_uncertainty=false", *overrides])
        truth = pd.read_csv(args.truth).set_index("video")["true_score"] if args.truth else None
        if args.command == "heldout":
            score = heldout_accuracy(data, config, args.folds, args.repeats, args.seed)
            line = (
                f"{solver}: held-out sign accuracy global {score.global_accuracy:.4f}, "
                f"local {score.local_accuracy:.4f} ({score.folds} folds)"
            )
            if truth is not None:
                full = train_criterion(data, config)
                line += f", Spearman vs truth {spearman_vs_truth(full, truth):.4f}"
            print(line)
        else:
            cost = warm_start_cost(data, config, args.new_fraction, args.seed, truth)
            line = (
                f"{solver}: cold {cost.cold_epochs} epochs/iterations ({cost.cold_seconds:.2f} s), "
                f"warm {cost.warm_epochs} ({cost.warm_seconds:.2f} s), "
                f"max |global cold − warm| {cost.max_score_gap:.2e}, held-out accuracy cold "
                f"{cost.cold_accuracy:.4f} / warm {cost.warm_accuracy:.4f}"
            )
            if cost.cold_spearman is not None:
                line += (
                    f", Spearman vs truth cold {cost.cold_spearman:.4f} / "
                    f"warm {cost.warm_spearman:.4f}"
                )
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
