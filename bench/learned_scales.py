"""Users' rating scales learned by empirical Bayes, measured around the default solver.

The converged solver holds each user's scale s_n at 1 (minimising J over s inflates the scales
of users with extreme ratings; docs/solvers.md). This measures a two-stage alternative, not the
default: after the default solve, each user's log-scale is fitted to their comparisons against
the global scores (t = s_n·(ρ_b − ρ_a), the ratings as rounding intervals, so no scale runs off
to infinity), under a N(0, τ²) prior whose width τ is estimated from all users (the spread of
the fitted log-scales less their sampling variance; τ = 0 leaves every s_n at 1); then the
solver runs again, warm, with those scales. `--cap` keeps every scale at or below 1 (users can
only lose weight). Usage:

    python bench/learned_scales.py [--sets typical,scales,inverted,niche,dense,attacked]
        [--seeds 7,8,9] [--cap]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import SETS, Truth, build_set, global_spearman, table, target_rank  # noqa: E402
from quality_ceiling import rounded_log_probability  # noqa: E402

from ml.config import LicchaviConfig  # noqa: E402
from ml.data import ComparisonDataset  # noqa: E402
from ml.licchavi.trainer import CriterionResult, train_criterion  # noqa: E402
from ml.synthetic import MAIN_CRITERION, SyntheticParams  # noqa: E402

NEWTON_STEPS = 30
STEP = 1e-4  # central differences of the gradient, for the curvature


def fitted_log_scales(
    difference: np.ndarray,
    user: np.ndarray,
    score: np.ndarray,
    n_users: int,
    prior_variance: float,
    score_max: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's MAP log-scale under N(0, prior_variance), and its sampling variance."""
    low = np.clip((score - 0.5) / score_max, -1.0, 1.0)
    high = np.clip((score + 0.5) / score_max, -1.0, 1.0)

    def gradient(log_scale: np.ndarray) -> np.ndarray:
        # t = e^ℓ·Δ, so d(−log p)/dℓ = −(d log p / dt)·t; the prior adds ℓ / variance.
        t = np.exp(log_scale)[user] * difference
        _, slope = rounded_log_probability(t, low, high)
        return np.bincount(user, -slope * t, minlength=n_users) + log_scale / prior_variance

    def curvature(log_scale: np.ndarray) -> np.ndarray:
        return np.maximum(
            (gradient(log_scale + STEP) - gradient(log_scale - STEP)) / (2 * STEP), 1e-6
        )

    log_scale = np.zeros(n_users)
    for _ in range(NEWTON_STEPS):  # one-dimensional and independent: Newton, steps clipped
        log_scale += np.clip(-gradient(log_scale) / curvature(log_scale), -1.0, 1.0)
    return log_scale, 1.0 / curvature(log_scale)


def learned_scales(result: CriterionResult, truth: Truth, cap: bool) -> tuple[np.ndarray, float]:
    """The users' scales (in `result.user_ids` order) and the prior's width τ."""
    frame = truth.comparisons[truth.comparisons["criteria"] == MAIN_CRITERION]
    users = pd.Index(result.user_ids.astype(str))
    videos = pd.Index(result.video_ids.astype(str))
    user = users.get_indexer(frame["public_username"].astype(str))
    rho = result.global_scores
    difference = (
        rho[videos.get_indexer(frame["video_b"].astype(str))]
        - rho[videos.get_indexer(frame["video_a"].astype(str))]
    )
    score = frame["score"].to_numpy(dtype=np.float64)
    score_max = SyntheticParams().score_max
    # Nearly flat prior first: the spread of these estimates, less their noise, is τ².
    estimate, variance = fitted_log_scales(difference, user, score, len(users), 100.0, score_max)
    tau_squared = max(0.0, float(np.var(estimate) - np.mean(variance)))
    if tau_squared == 0.0:
        return np.ones(len(users)), 0.0
    log_scale, _ = fitted_log_scales(difference, user, score, len(users), tau_squared, score_max)
    if cap:
        log_scale = np.minimum(log_scale, 0.0)
    return np.exp(log_scale), float(np.sqrt(tau_squared))


def row(name: str, seed: int, cap: bool) -> dict[str, object]:
    truth = build_set(name, 30_000, seed)
    data = ComparisonDataset.from_frame(truth.comparisons).criteria[MAIN_CRITERION]
    config = LicchaviConfig(personalise=False)
    v1 = train_criterion(data, LicchaviConfig(solver="faithful"))
    default = train_criterion(data, config)
    scales, tau = learned_scales(default, truth, cap)
    # The scales are in the result's user order, which is the state's.
    assert np.array_equal(default.state.user_ids, default.user_ids)
    state = dataclasses.replace(default.state, s=scales)
    learned = train_criterion(data, config, initial_state=state)

    return {
        "set": name,
        "seed": seed,
        "v1": global_spearman(v1, truth),
        "default": global_spearman(default, truth),
        "learned scales": global_spearman(learned, truth),
        "τ": tau,
        "smallest / largest s": f"{scales.min():.2f} / {scales.max():.2f}",
        "target rank (default / learned)": (
            None
            if truth.target is None
            else f"{target_rank(default, truth)} / {target_rank(learned, truth)}"
        ),
        "converged": learned.converged,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--cap", action="store_true", help="keep every scale at or below 1")
    args = parser.parse_args(argv)
    rows = [
        row(name, int(seed), args.cap)
        for name in args.sets.split(",")
        for seed in args.seeds.split(",")
    ]
    print(
        table([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
