"""Uncertainty of local and global scores (v1 formulas), vectorised over pairs and videos.

Local:  Δθ_nv = (s_n² Σ_{comparisons of n involving v} f''(t))^(-1/2), the curvature of the
        fit term along θ_nv (the |·| coupling has no curvature).
Global: Δρ_v = median({|θ_nv − ρ_v| over raters} ∪ {4, 4, 4, 4, 4}) / sqrt(#raters), i.e. the
        raters' spread with a prior of five pseudo-observations at 4.
"""

from __future__ import annotations

import numpy as np
import torch

from ml.licchavi.losses import bt_second_derivative
from ml.licchavi.problem import Problem

PRIOR_DISTANCE = 4.0
PRIOR_WEIGHT = 5


def local_uncertainty(problem: Problem, theta: torch.Tensor, s: torch.Tensor) -> np.ndarray:
    """Δθ per (user, video) pair, computed in float64."""
    theta64, s64 = theta.to(torch.float64), s.to(torch.float64)
    scale = s64.index_select(0, problem.comparison_user)
    t = scale * (theta64.index_select(0, problem.pair_a) - theta64.index_select(0, problem.pair_b))
    curvature = bt_second_derivative(t) * scale * scale
    per_pair = torch.zeros(problem.n_pairs, dtype=torch.float64, device=theta.device)
    per_pair.scatter_add_(0, problem.pair_a, curvature)
    per_pair.scatter_add_(0, problem.pair_b, curvature)
    with np.errstate(divide="ignore"):
        return np.asarray(per_pair.cpu().numpy() ** -0.5)


def global_uncertainty(problem: Problem, theta: torch.Tensor, rho: torch.Tensor) -> np.ndarray:
    """Δρ per video: prior-padded median of the raters' distances over sqrt(#raters)."""
    video = problem.pair_video_np
    rho_np = rho.detach().to(torch.float64).cpu().numpy()
    distance = np.abs(theta.detach().to(torch.float64).cpu().numpy() - rho_np[video])
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
