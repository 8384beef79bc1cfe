"""Index tensors of one criterion's training problem, built once and reused by every epoch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ml.data import CriterionComparisons


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when available; CUDA is only probed here, never at import time."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but CUDA is not available")
    return torch.device(device)


def data_fingerprint(data: CriterionComparisons) -> str:
    """Hash of the exact comparisons, to tell a resume on the same data from a warm start."""
    digest = hashlib.sha256()
    digest.update(data.criterion.encode())
    for ids in (data.user_ids, data.video_ids):
        digest.update("\x1f".join(map(str, ids)).encode())
        digest.update(b"\x1e")
    for array in (data.user_index, data.video_a_index, data.video_b_index, data.ratings):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Problem:
    """Comparisons and (user, video) pairs as flat index tensors.

    Local scores θ live on the pairs (one value per video a user compared), sorted by user then
    video. Every term of the objective is a gather or a scatter-add over these indices
    (scatter_add_ rather than index_add_: same sequential order on the CPU, twice as fast).
    """

    n_users: int
    n_videos: int
    # per comparison
    comparison_user: torch.Tensor
    pair_a: torch.Tensor
    pair_b: torch.Tensor
    ratings: torch.Tensor
    # per pair
    pair_user: torch.Tensor
    pair_video: torch.Tensor
    # per user
    comparisons_per_user: torch.Tensor
    # numpy copies of the pair layout, for outputs and state
    pair_user_np: np.ndarray
    pair_video_np: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.pair_user.shape[0])

    @property
    def n_comparisons(self) -> int:
        return int(self.ratings.shape[0])

    @classmethod
    def build(cls, data: CriterionComparisons, device: torch.device, dtype: torch.dtype) -> Problem:
        n_videos = data.n_videos
        key_a = data.user_index * n_videos + data.video_a_index
        key_b = data.user_index * n_videos + data.video_b_index
        pair_keys, inverse = np.unique(np.concatenate([key_a, key_b]), return_inverse=True)
        n = data.n_comparisons
        pair_user = pair_keys // n_videos
        pair_video = pair_keys % n_videos
        comparisons_per_user = np.bincount(data.user_index, minlength=data.n_users)

        def as_index(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)

        return cls(
            n_users=data.n_users,
            n_videos=n_videos,
            comparison_user=as_index(data.user_index),
            pair_a=as_index(inverse[:n]),
            pair_b=as_index(inverse[n:]),
            ratings=torch.from_numpy(data.ratings).to(device=device, dtype=dtype),
            pair_user=as_index(pair_user),
            pair_video=as_index(pair_video),
            comparisons_per_user=torch.from_numpy(comparisons_per_user).to(device),
            pair_user_np=pair_user.astype(np.int64),
            pair_video_np=pair_video.astype(np.int64),
        )

    def sum_per_user(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of a per-comparison quantity over each user's comparisons."""
        out = torch.zeros(self.n_users, dtype=values.dtype, device=values.device)
        return out.scatter_add_(0, self.comparison_user, values)

    def sum_per_video(self, pair_values: torch.Tensor) -> torch.Tensor:
        """Sum of a per-pair quantity over each video's raters."""
        out = torch.zeros(self.n_videos, dtype=pair_values.dtype, device=pair_values.device)
        return out.scatter_add_(0, self.pair_video, pair_values)

    def sum_per_pair(self, comparison_values: torch.Tensor) -> torch.Tensor:
        """Scatter ∂/∂(θ_a − θ_b) of each comparison onto its two pairs (+ on a, − on b).

        The a-side and b-side sums are accumulated separately, in comparison order, then added:
        the original's one-hot products summed that way, and near-cancelling sums decide the
        sign of the first coupling step, so the order is kept.
        """
        a_side = torch.zeros(self.n_pairs, dtype=comparison_values.dtype, device=self.pair_a.device)
        a_side.scatter_add_(0, self.pair_a, comparison_values)
        b_side = torch.zeros_like(a_side)
        b_side.scatter_add_(0, self.pair_b, comparison_values)
        return a_side.sub_(b_side)
