"""Uncertainty of local and global scores (v1 formulas), vectorised over pairs and videos.

Local:  Δθ_nv = (s_n² Σ_{comparisons of n involving v} f''(t))^(-1/2), the curvature of the
        fit term along θ_nv (the |·| coupling has no curvature).
Global: Δρ_v = median({|θ_nv − ρ_v| over raters} ∪ {4, 4, 4, 4, 4}) / sqrt(#raters), i.e. the
        raters' spread with a prior of five pseudo-observations at 4.
Global, converged solver: Δρ_v = (2·w0 + Σ_n v_nv·Δθ_nv^(−2))^(−1/2), the curvature of the
        fit passed on to ρ_v from every rater, in proportion to their voting right v_nv (1
        without trust data; docs/solvers.md, "Uncertainty": at the default w its
        95 % intervals cover 86–99 % of true scores for videos with ≥ 6 contributors, where the
        v1 formula's covered 0–1 % with this solver).
"""

from __future__ import annotations

import numpy as np

from ml.licchavi.kernels import Array
from ml.licchavi.losses import bt_second_derivative
from ml.licchavi.problem import Problem

PRIOR_DISTANCE = 4.0
PRIOR_WEIGHT = 5


def local_uncertainty(problem: Problem, theta: Array, s: Array) -> np.ndarray:
    """Δθ per (user, video) pair, computed in float64."""
    k = problem.kernels
    theta64, s64 = k.astype(theta, "float64"), k.astype(s, "float64")
    scale = k.take(s64, problem.comparison_user)
    t = scale * (k.take(theta64, problem.pair_a) - k.take(theta64, problem.pair_b))
    curvature = bt_second_derivative(k, t) * scale * scale
    # One scatter over the a-sides then the b-sides: each pair sums its curvatures in that order.
    both_sides = k.concatenate([problem.pair_a, problem.pair_b])
    per_pair = k.scatter_add(problem.n_pairs, both_sides, k.concatenate([curvature, curvature]))
    with np.errstate(divide="ignore"):
        return np.asarray(k.to_numpy(per_pair) ** -0.5)


def global_uncertainty(problem: Problem, theta: Array, rho: Array) -> np.ndarray:
    """Δρ per video: prior-padded median of the raters' distances over sqrt(#raters)."""
    video = problem.pair_video_np
    rho_np = problem.kernels.to_numpy(rho).astype(np.float64)
    distance = np.abs(problem.kernels.to_numpy(theta).astype(np.float64) - rho_np[video])
    n_videos = problem.n_videos
    raters = np.bincount(video, minlength=n_videos)
    # Sort by video, then distance: a stable sort on video after sorting the distances.
    by_distance = np.argsort(distance)
    order = by_distance[np.argsort(video[by_distance], kind="stable")]
    sorted_distance = distance[order]
    start = np.concatenate([[0], np.cumsum(raters)[:-1]])
    # How many of each video's sorted distances fall below the prior value.
    below = np.bincount(video[distance < PRIOR_DISTANCE], minlength=n_videos)
    total = raters + PRIOR_WEIGHT

    def element(position: np.ndarray) -> np.ndarray:
        """The position-th value of the merged list: distances < 4, then five 4s, then the rest."""
        from_low = position < below
        from_prior = ~from_low & (position < below + PRIOR_WEIGHT)
        rank = np.where(from_low, position, position - PRIOR_WEIGHT)
        index = np.clip(start + rank, 0, max(sorted_distance.shape[0] - 1, 0))
        values = sorted_distance[index] if sorted_distance.size else np.zeros_like(position, float)
        return np.where(from_prior, PRIOR_DISTANCE, values)

    lower = element((total - 1) // 2)
    upper = element(total // 2)
    median = (lower + upper) / 2
    with np.errstate(divide="ignore"):
        return np.asarray(median / np.sqrt(raters))


def curvature_global_uncertainty(
    problem: Problem, local_spread: np.ndarray, w0: float
) -> np.ndarray:
    """Δρ per video from the curvature of the fit: (2·w0 + Σ over raters of Δθ_nv^(−2))^(−1/2).

    A Laplace approximation that lets every rater's curvature reach ρ_v, as if their θ moved
    with it; it ignores the coupling's kink and the correlations between videos. Its width
    grows as a video's comparisons get fewer, and stays finite (the w0 prior) for any video.
    """
    with np.errstate(divide="ignore"):
        precision = np.asarray(local_spread, dtype=np.float64) ** -2.0
    if problem.voting_rights_np is not None:
        # A rater passes on only their voting right's share: a hundred untrusted accounts must
        # not make a video look certain when they may move its score by their capped share only.
        precision = precision * problem.voting_rights_np
    per_video = np.bincount(problem.pair_video_np, weights=precision, minlength=problem.n_videos)
    return np.asarray((2.0 * w0 + per_video) ** -0.5)
