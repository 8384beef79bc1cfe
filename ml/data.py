"""Comparison data: loading, de-duplication and integer indexing per criterion."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_SCORE_MAX = 10.0
REQUIRED_COLUMNS = ("public_username", "video_a", "video_b", "criteria", "score")
RECORD_COLUMNS = (*REQUIRED_COLUMNS, "score_max")


@dataclass(frozen=True)
class CriterionComparisons:
    """The comparisons of one criterion, with users and videos replaced by integer indices.

    Comparisons are grouped by user (user_index is non-decreasing) and keep their input order
    within a user. ratings are r = score / score_max; positive means video_b is preferred.
    """

    criterion: str
    user_ids: np.ndarray
    video_ids: np.ndarray
    user_index: np.ndarray
    video_a_index: np.ndarray
    video_b_index: np.ndarray
    ratings: np.ndarray
    # Boolean per user: trusted by an operator (voting rights, ml/licchavi/voting_rights.py);
    # None without trust data, where every contributor has a full voting right as in v1.
    trusted: np.ndarray | None = None

    @property
    def n_comparisons(self) -> int:
        return int(self.ratings.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_videos(self) -> int:
        return int(self.video_ids.shape[0])

    def canonical(self) -> CriterionComparisons:
        """The same comparisons in an order that does not depend on the input's row order.

        Each comparison is written with the lower video index on side a (the rating's sign
        flipped when swapped: J is unchanged) and sorted by (user, video a, video b), unique once
        duplicates are resolved. Sums over comparisons then run in one order, so the same
        comparisons give the same bits whatever order they were stored or sent in.
        """
        swap = self.video_a_index > self.video_b_index
        low = np.where(swap, self.video_b_index, self.video_a_index)
        high = np.where(swap, self.video_a_index, self.video_b_index)
        n_videos = max(self.n_videos, 1)
        if max(self.n_users, 1) * n_videos * n_videos < 2**63:
            # One int64 key sorts the same as the three, stably, and 14x faster at 5M rows
            # (0.2 s against 2.75 s of CPU for lexsort).
            key = (self.user_index.astype(np.int64) * n_videos + low) * n_videos + high
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((high, low, self.user_index))
        # + 0.0 turns the −0.0 of a flipped neutral rating into 0.0.
        ratings = np.where(swap, -self.ratings, self.ratings) + 0.0
        return replace(
            self,
            user_index=self.user_index[order],
            video_a_index=low[order],
            video_b_index=high[order],
            ratings=np.ascontiguousarray(ratings[order]),
        )

    def subset(self, mask: np.ndarray) -> CriterionComparisons:
        """The comparisons selected by a boolean mask, re-indexed over the users/videos left."""
        users = self.user_index[mask]
        video_a = self.video_a_index[mask]
        video_b = self.video_b_index[mask]
        kept_users, user_index = np.unique(users, return_inverse=True)
        kept_videos, pair_index = np.unique(np.concatenate([video_a, video_b]), return_inverse=True)
        n = video_a.shape[0]
        return CriterionComparisons(
            criterion=self.criterion,
            user_ids=self.user_ids[kept_users],
            video_ids=self.video_ids[kept_videos],
            user_index=user_index.astype(np.int64),
            video_a_index=pair_index[:n].astype(np.int64),
            video_b_index=pair_index[n:].astype(np.int64),
            ratings=self.ratings[mask],
            trusted=(
                self.trusted[kept_users]
                if self.trusted is not None and self.trusted[kept_users].any()
                else None
            ),
        )

    def with_trusted(self, trusted: Iterable[str] | None) -> CriterionComparisons:
        """The same comparisons with the users in ``trusted`` marked trusted.

        When none of this criterion's users is in it (or it is None) there is no trust data:
        trusted stays None, every voting right is 1 and the fingerprint is v1's.
        """
        wanted = set() if trusted is None else {str(user) for user in trusted}
        mask = np.fromiter(
            (str(user) in wanted for user in self.user_ids), dtype=bool, count=self.n_users
        )
        return replace(self, trusted=mask if mask.any() else None)

    def to_frame(self) -> pd.DataFrame:
        """Back to the public column layout (score expressed out of 10)."""
        return pd.DataFrame(
            {
                "public_username": self.user_ids[self.user_index],
                "video_a": self.video_ids[self.video_a_index],
                "video_b": self.video_ids[self.video_b_index],
                "criteria": self.criterion,
                "score": self.ratings * DEFAULT_SCORE_MAX,
                "score_max": DEFAULT_SCORE_MAX,
            }
        )


def _sorted_codes(values: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes whose order follows the sorted unique values (sorting only the uniques).

    Missing values get code -1.
    """
    codes, uniques = pd.factorize(values)
    codes = np.asarray(codes)
    uniques_array = np.array([str(value) for value in uniques], dtype=object)
    order = np.argsort(uniques_array.astype(str), kind="stable")
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.shape[0], dtype=np.int64)
    return np.where(codes >= 0, rank[codes], -1), uniques_array[order]


def _dense(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes present, codes renumbered 0..k-1 in the same order), in linear time."""
    present = np.bincount(codes, minlength=size) > 0
    renumber = np.cumsum(present) - 1
    return np.flatnonzero(present), renumber[codes]


def _first_of_last_rows(key_columns: list[np.ndarray], bounds: list[int]) -> np.ndarray:
    """Mask of the rows that are the last occurrence of their key (one hash pass)."""
    capacity = 1
    for bound in bounds:
        capacity *= max(bound, 1)
    if capacity < 2**62:
        key = np.zeros(key_columns[0].shape[0], dtype=np.int64)
        for column, bound in zip(key_columns, bounds, strict=True):
            key = key * max(bound, 1) + column
        return ~pd.Series(key).duplicated(keep="last").to_numpy()
    frame = pd.DataFrame({str(i): column for i, column in enumerate(key_columns)})
    return ~frame.duplicated(keep="last").to_numpy()


def _criterion_comparisons(
    criterion: str,
    users: np.ndarray,
    video_a: np.ndarray,
    video_b: np.ndarray,
    ratings: np.ndarray,
    user_names: np.ndarray,
    video_names: np.ndarray,
) -> CriterionComparisons:
    """Index one criterion's rows (global codes in, local dense codes out)."""
    kept_users, user_index = _dense(users, user_names.shape[0])
    n = video_a.shape[0]
    kept_videos, video_index = _dense(np.concatenate([video_a, video_b]), video_names.shape[0])
    # Group by user while keeping the input order inside each user.
    order = np.argsort(user_index, kind="stable")
    return CriterionComparisons(
        criterion=criterion,
        user_ids=user_names[kept_users],
        video_ids=video_names[kept_videos],
        user_index=user_index[order].astype(np.int64),
        video_a_index=video_index[:n][order].astype(np.int64),
        video_b_index=video_index[n:][order].astype(np.int64),
        ratings=np.ascontiguousarray(ratings[order], dtype=np.float64),
    )


@dataclass(frozen=True)
class ComparisonDataset:
    """Comparisons of every criterion present in the input."""

    criteria: dict[str, CriterionComparisons]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> ComparisonDataset:
        """Build from columns public_username, video_a, video_b, criteria, score[, score_max].

        Rows with a missing id or score, or comparing a video with itself, are dropped. When a
        user compares the same pair several times on a criterion (in either order), the last
        row wins.
        """
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(f"comparisons: missing column(s) {', '.join(missing)}")
        score = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=np.float64)
        if "score_max" in frame.columns:
            score_max = pd.to_numeric(frame["score_max"], errors="coerce").to_numpy(np.float64)
            score_max = np.where(np.isnan(score_max), DEFAULT_SCORE_MAX, score_max)
        else:
            score_max = np.full(score.shape[0], DEFAULT_SCORE_MAX)
        if np.any(score_max <= 0):
            raise ValueError("comparisons: score_max must be positive")
        ratings = score / score_max
        valid = ~np.isnan(ratings)
        if np.any(np.abs(ratings[valid]) > 1 + 1e-9):
            count = int(np.sum(np.abs(ratings[valid]) > 1 + 1e-9))
            raise ValueError(f"comparisons: {count} row(s) with |score| > score_max")

        users, user_names = _sorted_codes(frame["public_username"])
        # Concatenated as a Series: Arrow strings stay Arrow strings (no object per row).
        both_videos = pd.concat([frame["video_a"], frame["video_b"]], ignore_index=True)
        video_codes, video_names = _sorted_codes(both_videos)
        n_rows = score.shape[0]
        video_a, video_b = video_codes[:n_rows], video_codes[n_rows:]
        criteria_codes, criteria_names = pd.factorize(frame["criteria"])
        criteria_codes = np.asarray(criteria_codes)
        criteria_names = pd.Index([str(name) for name in criteria_names])
        valid &= (users >= 0) & (video_a >= 0) & (video_b >= 0) & (criteria_codes >= 0)
        valid &= video_a != video_b

        # Later rows replace earlier ones for the same (criterion, user, unordered pair).
        rows = np.flatnonzero(valid)
        low, high = np.minimum(video_a, video_b), np.maximum(video_a, video_b)
        latest = _first_of_last_rows(
            [criteria_codes[rows], users[rows], low[rows], high[rows]],
            [len(criteria_names), len(user_names), len(video_names), len(video_names)],
        )
        keep = np.zeros(n_rows, dtype=bool)
        keep[rows[latest]] = True

        result: dict[str, CriterionComparisons] = {}
        for code in np.argsort(np.asarray(criteria_names, dtype=str)):
            selected = keep & (criteria_codes == code)
            if not selected.any():
                continue
            name = str(criteria_names[code])
            result[name] = _criterion_comparisons(
                name,
                users[selected],
                video_a[selected],
                video_b[selected],
                np.clip(ratings[selected], -1.0, 1.0),
                user_names,
                video_names,
            )
        return cls(criteria=result)

    @classmethod
    def from_records(cls, records: Iterable[tuple[Any, ...]]) -> ComparisonDataset:
        """Build from (user, video_a, video_b, criterion, score[, score_max]) tuples."""
        rows = list(records)
        if rows and len(rows[0]) == len(RECORD_COLUMNS) - 1:
            frame = pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))
        else:
            frame = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
        for column in ("public_username", "video_a", "video_b"):
            frame[column] = frame[column].astype(str)
        return cls.from_frame(frame)

    @property
    def n_comparisons(self) -> int:
        return sum(data.n_comparisons for data in self.criteria.values())

    def with_trusted(self, trusted: Iterable[str] | None) -> ComparisonDataset:
        """Every criterion with the users in ``trusted`` marked trusted (None: no trust data)."""
        users = None if trusted is None else frozenset(str(user) for user in trusted)
        return ComparisonDataset(
            criteria={name: data.with_trusted(users) for name, data in self.criteria.items()}
        )


# The text columns of a comparisons CSV.
ID_COLUMNS = ("public_username", "video_a", "video_b", "criteria")


def _csv_engine() -> dict[str, Any]:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return {"engine": "c"}
    return {"engine": "pyarrow"}


def _read_csv(source: str | Path | io.BytesIO) -> pd.DataFrame:
    header = pd.read_csv(source, nrows=0).columns
    if isinstance(source, io.BytesIO):
        source.seek(0)
    wanted = [column for column in header if column in RECORD_COLUMNS]
    engine = _csv_engine()
    if engine["engine"] == "pyarrow":
        # Arrow strings: ids stay text whatever they look like, and no Python object is made per
        # row (5M rows: 2.1 GB peak instead of 2.6, 7.7 s instead of 9.6). A categorical column
        # is typed by inference first with this engine: user "007" became the integer 7.
        ids: Any = "string[pyarrow]"
        column_types: dict[str, Any] = dict.fromkeys(ID_COLUMNS, ids)
    else:
        # Users and criteria repeat a lot: the C parser's categoricals (of strings) save
        # hashing every string again.
        column_types = {"public_username": "category", "criteria": "category"}
        column_types |= {"video_a": str, "video_b": str}
    column_types |= {"score": np.float64, "score_max": np.float64}
    frame: pd.DataFrame = pd.read_csv(source, usecols=wanted, dtype=column_types, **engine)
    return frame


def read_comparisons(path: str | Path) -> ComparisonDataset:
    """Load a comparisons CSV, or a Tournesol export .zip holding a comparisons.csv."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if Path(name).name == "comparisons.csv"]
            if not names:
                raise ValueError(f"{path}: no comparisons.csv in the archive")
            frame = _read_csv(io.BytesIO(archive.read(names[0])))
    else:
        frame = _read_csv(path)
    return ComparisonDataset.from_frame(frame)
