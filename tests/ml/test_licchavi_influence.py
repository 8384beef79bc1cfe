"""One contributor's influence on a global score is bounded.

Bound with the local models fixed. For a video v, ρ_v minimises
    h(ρ) = w · Σ_{raters n} |θ_nv − ρ| + w0 · ρ²,
which is 2·w0-strongly convex. One more rater adds g(ρ) = w·|c − ρ|, a w-Lipschitz convex term
(c is whatever the rater's local score is). If ρ* minimises h and ρ' minimises h + g, then
0 ∈ ∂h(ρ') + ∂g(ρ') and strong monotonicity of ∂h gives
    2·w0·|ρ' − ρ*|² ≤ (∂h(ρ') − ∂h(ρ*))·(ρ' − ρ*) = −∂g(ρ')·(ρ' − ρ*) ≤ w·|ρ' − ρ*|,
so |ρ' − ρ*| ≤ w / (2·w0) ≤ w / w0, however extreme c is.

Bound with the other local models re-optimised (s fixed, so J is jointly convex in θ and ρ).
Minimising the other users' θ out of J leaves φ(ρ) = w0·‖ρ‖² + ψ(ρ) with ψ convex, so φ is
2·w0-strongly convex in ρ. A rater comparing k videos adds at most w·Σ_{v rated}|θ_v − ρ_v|
(whose subgradients have at most k entries, each ≤ w), and the same argument gives
    ‖Δρ‖₂ ≤ w·√k / (2·w0),
i.e. ≤ w/(√2·w0) ≤ w/w0 on every video for a rater who made a single comparison (k = 2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.config import LicchaviConfig
from ml.data import ComparisonDataset
from ml.licchavi import CriterionResult, train_criterion
from tests.ml.licchavi_support import CRITERION, reference_comparisons


def shrunk_median(values: np.ndarray, w: float, w0: float) -> float:
    """Exact minimiser of w·Σ|values − ρ| + w0·ρ² (candidates: kinks and interval optima)."""
    ordered = np.sort(values)
    candidates = list(ordered)
    for below in range(len(ordered) + 1):
        stationary = w * (len(ordered) - 2 * below) / (2 * w0)
        low = -np.inf if below == 0 else ordered[below - 1]
        high = np.inf if below == len(ordered) else ordered[below]
        if low <= stationary <= high:
            candidates.append(stationary)
    costs = [w * np.abs(ordered - c).sum() + w0 * c * c for c in candidates]
    return float(candidates[int(np.argmin(costs))])


@pytest.fixture(scope="module")
def converged_xs() -> CriterionResult:
    config = LicchaviConfig(
        solver="converged", personalise=False, device="cpu", compute_uncertainty=False
    )
    return train_criterion(reference_comparisons("xs"), config)


def test_global_scores_are_shrunk_medians_of_the_local_ones(converged_xs: CriterionResult) -> None:
    result = converged_xs
    w, w0 = result.config.w, result.config.w0
    for video in range(len(result.video_ids)):
        raters = result.local_scores[result.local_video_index == video]
        assert result.global_scores[video] == pytest.approx(shrunk_median(raters, w, w0), abs=1e-5)


@pytest.mark.parametrize("extreme", [-1e3, 1e3])
def test_one_rater_moves_a_score_by_at_most_w_over_2w0_with_local_models_fixed(
    converged_xs: CriterionResult, extreme: float
) -> None:
    result = converged_xs
    w, w0 = result.config.w, result.config.w0
    for video in range(len(result.video_ids)):
        raters = result.local_scores[result.local_video_index == video]
        before = shrunk_median(raters, w, w0)
        after = shrunk_median(np.append(raters, extreme), w, w0)
        assert abs(after - before) <= w / (2 * w0) + 1e-12


@pytest.mark.parametrize(("n_victims", "w", "w0"), [(1, 1.0, 1.0), (20, 1.0, 1.0), (20, 2.0, 0.5)])
def test_an_adversarial_user_moves_global_scores_within_the_bound(
    n_victims: int, w: float, w0: float
) -> None:
    """A new user pushes the lowest-ranked video above the top ones with maximal scores."""
    base = reference_comparisons("xs")
    config = LicchaviConfig(
        solver="converged", personalise=False, device="cpu", compute_uncertainty=False, w=w, w0=w0
    )
    before = train_criterion(base, config)
    scores = pd.Series(before.global_scores, index=before.video_ids)
    target = scores.idxmin()
    victims = [video for video in scores.sort_values(ascending=False).index if video != target]
    attack = pd.DataFrame(
        {
            "public_username": "zz-adversary",
            "video_a": target,
            "video_b": victims[:n_victims],
            "criteria": CRITERION,
            "score": -10.0,  # video_a (the target) strongly preferred
        }
    )
    attacked = ComparisonDataset.from_frame(pd.concat([base.to_frame(), attack]))
    after = train_criterion(attacked.criteria[CRITERION], config)
    assert after.converged
    delta = pd.Series(after.global_scores, index=after.video_ids) - scores
    rated = n_victims + 1
    assert delta[target] > 0  # the attack does push
    assert np.abs(delta).max() <= w / w0
    assert np.linalg.norm(delta) <= w * np.sqrt(rated) / (2 * w0) + 1e-6
