"""Index arrays of one criterion's training problem, built once and reused by every epoch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ml.data import CriterionComparisons
from ml.licchavi.kernels import Array, DTypeName, Kernels
from ml.licchavi.voting_rights import voting_rights


def data_fingerprint(data: CriterionComparisons) -> str:
    """Hash of the exact comparisons, to tell a resume on the same data from a warm start."""
    digest = hashlib.sha256()
    digest.update(data.criterion.encode())
    for ids in (data.user_ids, data.video_ids):
        digest.update("\x1f".join(map(str, ids)).encode())
        digest.update(b"\x1e")
    for array in (data.user_index, data.video_a_index, data.video_b_index, data.ratings):
        digest.update(np.ascontiguousarray(array).tobytes())
    if data.trusted is not None:  # absent without trust data: v1 fingerprints are unchanged
        digest.update(b"trusted\x1e" + np.packbits(data.trusted).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Problem:
    """Comparisons and (user, video) pairs as flat index arrays of the run's kernels.

    Local scores θ live on the pairs (one value per video a user compared), sorted by user then
    video. Every term of the objective is a gather or a scatter-add over these indices.
    """

    kernels: Kernels
    dtype: DTypeName  # of the parameters: float32 or float64
    n_users: int
    n_videos: int
    # per comparison
    comparison_user: Array
    pair_a: Array
    pair_b: Array
    ratings: Array
    # per pair
    pair_user: Array
    pair_video: Array
    # per user
    comparisons_per_user: np.ndarray
    # numpy copies of the pair layout, for outputs and state
    pair_user_np: np.ndarray
    pair_video_np: np.ndarray
    # Voting right v_nv per pair (ml/licchavi/voting_rights.py), in the parameters' dtype; None
    # when all are 1, so runs without trust data compute exactly v1's terms.
    voting_rights: Array | None = None
    voting_rights_np: np.ndarray | None = None

    def coupling_weight(self, w: float) -> Array | float:
        """w·v_nv per pair, the weight of each |θ_nv − ρ_v|; plain w without voting rights."""
        return w if self.voting_rights is None else w * self.voting_rights

    @property
    def n_pairs(self) -> int:
        return int(self.pair_user_np.shape[0])

    @property
    def n_comparisons(self) -> int:
        return int(self.ratings.shape[0])

    @classmethod
    def build(cls, data: CriterionComparisons, kernels: Kernels, dtype: DTypeName) -> Problem:
        n_videos = data.n_videos
        key_a = data.user_index * n_videos + data.video_a_index
        key_b = data.user_index * n_videos + data.video_b_index
        pair_keys, inverse = np.unique(np.concatenate([key_a, key_b]), return_inverse=True)
        n = data.n_comparisons
        pair_user = (pair_keys // n_videos).astype(np.int64)
        pair_video = (pair_keys % n_videos).astype(np.int64)

        def as_index(array: np.ndarray) -> Array:
            return kernels.array(np.asarray(array, dtype=np.int64), "int64")

        rights = voting_rights(pair_user, pair_video, data.trusted, n_videos)

        return cls(
            kernels=kernels,
            dtype=dtype,
            n_users=data.n_users,
            n_videos=n_videos,
            comparison_user=as_index(data.user_index),
            pair_a=as_index(inverse[:n]),
            pair_b=as_index(inverse[n:]),
            ratings=kernels.array(data.ratings, dtype),
            pair_user=as_index(pair_user),
            pair_video=as_index(pair_video),
            comparisons_per_user=np.bincount(data.user_index, minlength=data.n_users),
            pair_user_np=pair_user,
            pair_video_np=pair_video,
            voting_rights=None if rights is None else kernels.array(rights, dtype),
            voting_rights_np=rights,
        )

    def sum_per_user(self, values: Array) -> Array:
        """Sum of a per-comparison quantity over each user's comparisons."""
        return self.kernels.scatter_add(self.n_users, self.comparison_user, values)

    def sum_per_video(self, pair_values: Array) -> Array:
        """Sum of a per-pair quantity over each video's raters."""
        return self.kernels.scatter_add(self.n_videos, self.pair_video, pair_values)

    def sum_per_pair(self, comparison_values: Array) -> Array:
        """Scatter ∂/∂(θ_a − θ_b) of each comparison onto its two pairs (+ on a, − on b).

        The a-side and b-side sums are accumulated separately, in comparison order, then added:
        the original's one-hot products summed that way, and near-cancelling sums decide the
        sign of the first coupling step, so the order is kept.
        """
        a_side = self.kernels.scatter_add(self.n_pairs, self.pair_a, comparison_values)
        b_side = self.kernels.scatter_add(self.n_pairs, self.pair_b, comparison_values)
        a_side -= b_side
        return a_side

    def sum_over_both_sides(self, comparison_values: Array) -> Array:
        """Each pair's sum of a per-comparison quantity over the comparisons it is in, on
        either side (+ on both): the a-sides first, then the b-sides, in comparison order."""
        k = self.kernels
        both_sides = k.concatenate([self.pair_a, self.pair_b])
        return k.scatter_add(
            self.n_pairs, both_sides, k.concatenate([comparison_values, comparison_values])
        )
