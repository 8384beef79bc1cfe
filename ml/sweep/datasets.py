"""Frozen evaluation data of a sweep: comparisons, their folds and the truth, as bytes."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.data import ComparisonDataset, CriterionComparisons
from ml.synthetic import SyntheticParams, generate, split_heldout


@dataclass(frozen=True)
class FrozenDataset:
    """One criterion's comparisons with the fold of each side of each comparison.

    A comparison is tested in fold f when fold_a == f or fold_b == f and trained on otherwise,
    so a split by video keeps every comparison of a held-out video out of training. Splits by
    comparison or by user give both sides the same fold. truth_* are set for synthetic data.
    """

    comparisons: CriterionComparisons
    fold_a: np.ndarray
    fold_b: np.ndarray
    truth_global: pd.DataFrame | None = None  # video, true_score
    truth_individual: pd.DataFrame | None = None  # public_username, video, true_score

    def test_mask(self, fold: int) -> np.ndarray:
        return (self.fold_a == fold) | (self.fold_b == fold)

    @property
    def fingerprint(self) -> str:
        """sha256 of the comparisons (ids, pairs and ratings), independent of the split."""
        digest = hashlib.sha256()
        data = self.comparisons
        digest.update(data.criterion.encode())
        for array in (data.user_ids, data.video_ids):
            digest.update("\0".join(map(str, array)).encode())
        for array in (data.user_index, data.video_a_index, data.video_b_index, data.ratings):
            digest.update(np.ascontiguousarray(array).tobytes())
        if data.trusted is not None:  # without trust data, the fingerprint stays as it was
            digest.update(b"trusted\0" + np.ascontiguousarray(data.trusted, dtype=bool).tobytes())
        return digest.hexdigest()

    @property
    def split_fingerprint(self) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(np.ascontiguousarray(self.fold_a, dtype=np.int16).tobytes())
        digest.update(np.ascontiguousarray(self.fold_b, dtype=np.int16).tobytes())
        return digest.hexdigest()

    def to_bytes(self) -> bytes:
        data = self.comparisons
        arrays: dict[str, np.ndarray] = {
            "criterion": np.array([data.criterion]),
            "ratings": data.ratings,
            "fold_a": self.fold_a.astype(np.int16),
            "fold_b": self.fold_b.astype(np.int16),
        }
        arrays["user_ids"] = np.asarray(data.user_ids, dtype=str)
        arrays["video_ids"] = np.asarray(data.video_ids, dtype=str)
        for name in ("user_index", "video_a_index", "video_b_index"):
            arrays[name] = np.asarray(getattr(data, name))
        if data.trusted is not None:
            arrays["trusted"] = np.asarray(data.trusted, dtype=bool)
        if self.truth_global is not None:
            arrays["truth_video"] = self.truth_global["video"].to_numpy(dtype=str)
            arrays["truth_score"] = self.truth_global["true_score"].to_numpy(np.float64)
        if self.truth_individual is not None:
            arrays["truth_i_user"] = self.truth_individual["public_username"].to_numpy(dtype=str)
            arrays["truth_i_video"] = self.truth_individual["video"].to_numpy(dtype=str)
            arrays["truth_i_score"] = self.truth_individual["true_score"].to_numpy(np.float64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> FrozenDataset:
        with np.load(io.BytesIO(payload), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        comparisons = CriterionComparisons(
            criterion=str(arrays["criterion"][0]),
            user_ids=arrays["user_ids"].astype(object),
            video_ids=arrays["video_ids"].astype(object),
            user_index=arrays["user_index"],
            video_a_index=arrays["video_a_index"],
            video_b_index=arrays["video_b_index"],
            ratings=arrays["ratings"],
            trusted=arrays.get("trusted"),
        )
        truth_global = truth_individual = None
        if "truth_video" in arrays:
            truth_global = pd.DataFrame(
                {"video": arrays["truth_video"], "true_score": arrays["truth_score"]}
            )
        if "truth_i_user" in arrays:
            truth_individual = pd.DataFrame(
                {
                    "public_username": arrays["truth_i_user"],
                    "video": arrays["truth_i_video"],
                    "true_score": arrays["truth_i_score"],
                }
            )
        return cls(
            comparisons=comparisons,
            fold_a=arrays["fold_a"].astype(np.int64),
            fold_b=arrays["fold_b"].astype(np.int64),
            truth_global=truth_global,
            truth_individual=truth_individual,
        )


def assign_folds(
    data: CriterionComparisons, *, folds: int, split_by: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fold of each side of each comparison, drawn from `seed` (balanced sizes)."""
    rng = np.random.default_rng(seed)

    def balanced(n: int) -> np.ndarray:
        return rng.permutation(np.arange(n) % folds)

    if split_by == "comparison":
        fold = balanced(data.n_comparisons)
        return fold, fold
    if split_by == "user":
        fold = balanced(data.n_users)[data.user_index]
        return fold, fold
    if split_by == "video":
        of_video = balanced(data.n_videos)
        return of_video[data.video_a_index], of_video[data.video_b_index]
    raise ValueError(f"split_by: unknown {split_by!r}")


def freeze_holdout(
    frame: pd.DataFrame,
    *,
    criterion: str,
    folds: int,
    split_by: str,
    seed: int,
    trusted: Iterable[str] | None = None,
) -> FrozenDataset:
    """The live comparisons of `criterion` (public columns) with a stored k-fold split; the
    users in `trusted` are marked so, so that every evaluation trains with the voting rights a
    service run would give them."""
    dataset = ComparisonDataset.from_frame(frame).with_trusted(trusted)
    if criterion not in dataset.criteria:
        raise ValueError(f"no comparisons for criterion {criterion!r}")
    data = dataset.criteria[criterion]
    if data.n_comparisons < folds:
        raise ValueError(f"{data.n_comparisons} comparisons cannot make {folds} folds")
    fold_a, fold_b = assign_folds(data, folds=folds, split_by=split_by, seed=seed)
    return FrozenDataset(data, fold_a, fold_b)


def freeze_synthetic(
    generator: dict[str, object], *, seed: int, criterion: str, heldout_fraction: float
) -> FrozenDataset:
    """Generated comparisons of one seed with their truth; held-out rows are fold 1."""
    params = SyntheticParams.model_validate({**generator, "seed": seed})
    if criterion not in params.criteria:
        params = params.model_copy(update={"criteria": [criterion, *params.criteria[1:]]})
    generated = generate(params)
    train, test = split_heldout(generated.comparisons, heldout_fraction, seed=seed)
    frame = pd.concat([train.assign(_fold=0), test.assign(_fold=1)], ignore_index=True).astype(
        {"public_username": str, "video_a": str, "video_b": str, "criteria": str}
    )
    frame = frame[frame["criteria"] == criterion]
    data = ComparisonDataset.from_frame(frame).criteria[criterion]
    # from_frame regroups rows by user; find each kept comparison's fold by its key.
    fold_of = pd.Series(frame["_fold"].to_numpy(), index=_pair_keys(frame))
    fold = fold_of.reindex(_pair_keys(data.to_frame())).to_numpy(dtype=np.int64)
    truth_global = generated.truth_global[generated.truth_global["criteria"] == criterion]
    truth_individual = generated.truth_individual[
        generated.truth_individual["criteria"] == criterion
    ]
    return FrozenDataset(
        data,
        fold,
        fold,
        truth_global=truth_global[["video", "true_score"]].astype({"video": str}),
        truth_individual=truth_individual[["public_username", "video", "true_score"]].astype(
            {"public_username": str, "video": str}
        ),
    )


def _pair_keys(frame: pd.DataFrame) -> np.ndarray:
    """user + unordered pair, whichever side each video is on."""
    a = frame["video_a"].to_numpy(dtype=str)
    b = frame["video_b"].to_numpy(dtype=str)
    swap = a > b
    low, high = np.where(swap, b, a), np.where(swap, a, b)
    users = frame["public_username"].to_numpy(dtype=str)
    return np.char.add(np.char.add(np.char.add(users, "\0"), low), np.char.add("\0", high))
