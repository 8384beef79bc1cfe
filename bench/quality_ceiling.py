"""How well any estimator can rank the generated sets: the generator's own model, fitted exactly.

`bench/quality.py`'s sets are drawn from a known model (ml/synthetic.py): true scores N(0, 1), each
user's score of a video the true one plus N(0, indiv_noise²), ratings from the continuous
Bradley–Terry law of the difference, rounded to integers. This script fits that model itself to
the comparisons (the rounding as an interval, the personal noise integrated out by Gauss–Hermite
quadrature, the N(0, 1) prior), which no scoring model that does not know the generator can beat
by more than chance, and compares its global Spearman with v1's and the default's:

- `oracle MAP`: the posterior mode (L-BFGS);
- `oracle mean rank` (with `--samples N`): the posterior mean of each video's rank, by Hamiltonian
  Monte Carlo from the mode (diagonal mass from the mode's curvature), the Bayes estimate for a
  rank-correlation target.

Usage: python bench/quality_ceiling.py [--sets typical] [--comparisons 30000] [--seeds 7,8,9]
    [--samples 600] [--appearances 40,60,100]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import logsumexp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import Truth, build_set, global_spearman, table, train_frame  # noqa: E402

from ml.config import LicchaviConfig  # noqa: E402
from ml.metrics import spearman  # noqa: E402
from ml.synthetic import MAIN_CRITERION, SyntheticParams  # noqa: E402

QUADRATURE_NODES = 12
STEP = 1e-5  # central differences of the derivative, for the curvature


def rounded_log_probability(
    d: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """log P(r in [low, high] | d) under the continuous Bradley–Terry law (density
    d·exp(r·d) / (2 sinh d) on [−1, 1]), and its derivative in d; elementwise."""
    positive = d >= 0
    # P(k | d) = P(−k | −d): fold onto d ≥ 0 by mirroring the interval.
    top = np.where(positive, high, -low)
    width = high - low
    m = np.maximum(np.abs(d), 1e-9)
    log_p = m * (top - 1) + np.log(-np.expm1(-m * width)) - np.log(-np.expm1(-2 * m))
    # d log P / dm = (h − 1) + w / expm1(m w) − 2 / expm1(2 m); its two poles cancel at small
    # m, where the series 1 − w/2 + m (w²/12 − 1/3) is exact to O(m²).
    small = m < 1e-4
    safe = np.where(small, 1.0, m)
    slope = np.where(
        small,
        (top - 1) + 1 - width / 2 + m * (width**2 / 12 - 1 / 3),
        (top - 1) + width / np.expm1(safe * width) - 2 / np.expm1(2 * safe),
    )
    return log_p, np.where(positive, slope, -slope)


@dataclass(frozen=True)
class GeneratorModel:
    """The comparisons of one set, indexed for the generator's likelihood."""

    video_ids: pd.Index
    video_a: np.ndarray
    video_b: np.ndarray
    low: np.ndarray  # the rating's rounding interval on [-1, 1]
    high: np.ndarray
    offsets: np.ndarray  # quadrature nodes of the personal noise of the difference
    log_weights: np.ndarray

    @classmethod
    def of(cls, truth: Truth, indiv_noise: float, score_max: int) -> GeneratorModel:
        frame = truth.comparisons[truth.comparisons["criteria"] == MAIN_CRITERION]
        video_a = frame["video_a"].astype(str).to_numpy()
        video_b = frame["video_b"].astype(str).to_numpy()
        ids = pd.Index(np.unique(np.concatenate([video_a, video_b])))
        score = frame["score"].to_numpy(dtype=np.float64)
        nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
        return cls(
            video_ids=ids,
            video_a=ids.get_indexer(video_a),
            video_b=ids.get_indexer(video_b),
            low=np.clip((score - 0.5) / score_max, -1.0, 1.0),
            high=np.clip((score + 0.5) / score_max, -1.0, 1.0),
            # The difference of two users' noises has variance 2·indiv_noise².
            offsets=nodes * np.sqrt(2.0) * indiv_noise,
            log_weights=np.log(weights / weights.sum()),
        )

    def comparison_loss(self, difference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """−log P(rating | difference), the noise integrated out, and its derivative in the
        difference; one value per comparison."""
        log_p, slope = rounded_log_probability(
            difference[:, None] + self.offsets[None, :], self.low[:, None], self.high[:, None]
        )
        weighted = log_p + self.log_weights[None, :]
        total = logsumexp(weighted, axis=1)
        share = np.exp(weighted - total[:, None])
        return -total, -np.sum(share * slope, axis=1)

    def objective(self, scores: np.ndarray) -> tuple[float, np.ndarray]:
        """Negative log posterior (N(0, 1) prior) and its gradient."""
        loss, slope = self.comparison_loss(scores[self.video_b] - scores[self.video_a])
        n = len(scores)
        gradient = (
            scores
            + np.bincount(self.video_b, slope, minlength=n)
            - np.bincount(self.video_a, slope, minlength=n)
        )
        return float(loss.sum() + 0.5 * scores @ scores), gradient

    def curvature(self, scores: np.ndarray) -> np.ndarray:
        """Diagonal of the negative log posterior's Hessian (the prior's 1 included)."""
        difference = scores[self.video_b] - scores[self.video_a]
        second = (
            self.comparison_loss(difference + STEP)[1] - self.comparison_loss(difference - STEP)[1]
        ) / (2 * STEP)
        second = np.maximum(second, 0.0)
        n = len(scores)
        return (
            1.0
            + np.bincount(self.video_a, second, minlength=n)
            + np.bincount(self.video_b, second, minlength=n)
        )

    def mode(self) -> np.ndarray:
        result = minimize(
            self.objective,
            np.zeros(len(self.video_ids)),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "gtol": 1e-7},
        )
        return np.asarray(result.x)

    def mean_ranks(self, start: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, float]:
        """Posterior mean rank of each video by HMC; also the acceptance rate."""
        rng = np.random.default_rng(seed)
        mass = self.curvature(start)
        step, leapfrogs = 0.12, 12
        position = start.copy()
        energy, gradient = self.objective(position)
        rank_sum = np.zeros(len(position))
        kept = accepted = 0
        for iteration in range(samples):
            momentum = rng.standard_normal(len(position)) * np.sqrt(mass)
            new, new_energy, new_gradient = position.copy(), energy, gradient
            kick = momentum - 0.5 * step * new_gradient
            for leap in range(leapfrogs):
                new = new + step * kick / mass
                new_energy, new_gradient = self.objective(new)
                if leap < leapfrogs - 1:
                    kick = kick - step * new_gradient
            kick = kick - 0.5 * step * new_gradient
            before = energy + 0.5 * np.sum(momentum**2 / mass)
            after = new_energy + 0.5 * np.sum(kick**2 / mass)
            if np.log(rng.random()) < before - after:
                position, energy, gradient = new, new_energy, new_gradient
                accepted += 1
            if iteration >= samples // 4:  # the first quarter is burn-in
                rank_sum += position.argsort().argsort()
                kept += 1
        return rank_sum / kept, accepted / samples


def ceiling_row(
    name: str, comparisons: int, seed: int, samples: int, appearances: int | None = None
) -> dict[str, object]:
    if appearances is None:
        truth = build_set(name, comparisons, seed)
    else:  # the typical shape with videos for `appearances` comparisons each on average
        typical = build_set("typical", comparisons, seed, n_videos=2 * comparisons // appearances)
        truth = dataclasses.replace(typical, name=f"typical, {appearances} per video")
    defaults = SyntheticParams()
    model = GeneratorModel.of(truth, defaults.indiv_noise, defaults.score_max)
    target = truth.global_truth.reindex(model.video_ids).to_numpy()
    row: dict[str, object] = {"set": truth.name, "comparisons": comparisons, "seed": seed}
    for label, config in (("v1", LicchaviConfig(solver="faithful")), ("default", LicchaviConfig())):
        result, _ = train_frame(truth.comparisons, config)
        row[label] = global_spearman(result, truth)
    mode = model.mode()
    row["oracle MAP"] = spearman(mode, target)
    if samples:
        ranks, acceptance = model.mean_ranks(mode, samples, seed)
        row["oracle mean rank"] = spearman(ranks, target)
        row["HMC acceptance"] = acceptance
    row["v1 + 0.01"] = float(row["v1"]) + 0.01  # type: ignore[arg-type]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="typical")
    parser.add_argument("--comparisons", type=int, default=30_000)
    parser.add_argument(
        "--appearances",
        default="",
        help="the typical shape with this many comparisons per video instead (e.g. 40,60,100)",
    )
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--samples", type=int, default=0, help="HMC iterations (0: the mode only)")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.appearances:
        rows = [
            ceiling_row("typical", args.comparisons, seed, args.samples, int(appearances))
            for appearances in args.appearances.split(",")
            for seed in seeds
        ]
    else:
        rows = [
            ceiling_row(name, args.comparisons, seed, args.samples)
            for name in args.sets.split(",")
            for seed in seeds
        ]
    # Four digits: the differences that matter here are in the third.
    print(
        table([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
