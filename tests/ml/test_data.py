"""Loading comparisons: indexing, duplicates, pair orientation, score_max, file formats."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data import ComparisonDataset, CriterionComparisons, read_comparisons
from tests.ml.licchavi_support import REFERENCE, TINY_TOURNESOL


def rows(data: CriterionComparisons) -> list[tuple[str, str, str, float]]:
    return [
        (
            str(data.user_ids[u]),
            str(data.video_ids[a]),
            str(data.video_ids[b]),
            float(r),
        )
        for u, a, b, r in zip(
            data.user_index, data.video_a_index, data.video_b_index, data.ratings, strict=True
        )
    ]


def test_ids_are_sorted_and_comparisons_grouped_by_user_in_input_order() -> None:
    dataset = ComparisonDataset.from_records(
        [
            ("bob", "v3", "v1", "c", 5.0, 10.0),
            ("alice", "v2", "v3", "c", -2.0, 10.0),
            ("bob", "v2", "v1", "c", 10.0, 10.0),
            ("alice", "v1", "v2", "c", 1.0, 10.0),
        ]
    )
    data = dataset.criteria["c"]
    assert list(data.user_ids) == ["alice", "bob"]
    assert list(data.video_ids) == ["v1", "v2", "v3"]
    assert rows(data) == [
        ("alice", "v2", "v3", -0.2),
        ("alice", "v1", "v2", 0.1),
        ("bob", "v3", "v1", 0.5),
        ("bob", "v2", "v1", 1.0),
    ]
    for name in ("user_index", "video_a_index", "video_b_index"):
        assert getattr(data, name).dtype == np.int64
    assert data.ratings.dtype == np.float64


def test_later_row_replaces_earlier_one_in_either_order() -> None:
    dataset = ComparisonDataset.from_records(
        [
            ("u", "a", "b", "c", 4.0, 10.0),
            ("u", "b", "a", "c", 6.0, 10.0),  # same pair, other order: replaces the first
            ("u", "a", "b", "other", 1.0, 10.0),  # another criterion: kept
            ("w", "a", "b", "c", -3.0, 10.0),  # another user: kept
        ]
    )
    assert rows(dataset.criteria["c"]) == [("u", "b", "a", 0.6), ("w", "a", "b", -0.3)]
    assert rows(dataset.criteria["other"]) == [("u", "a", "b", 0.1)]


def test_rows_are_deduplicated_by_position_even_with_a_repeated_index() -> None:
    first = pd.DataFrame(
        {"public_username": ["u"], "video_a": ["a"], "video_b": ["b"], "criteria": ["c"]}
    ).assign(score=2.0)
    second = first.assign(score=-5.0)
    third = first.assign(video_a="x", score=1.0)
    dataset = ComparisonDataset.from_frame(pd.concat([first, second, third]))  # index 0, 0, 0
    assert rows(dataset.criteria["c"]) == [("u", "a", "b", -0.5), ("u", "x", "b", 0.1)]


def test_missing_score_max_means_ten_and_bad_rows_are_dropped_or_rejected() -> None:
    frame = pd.DataFrame(
        {
            "public_username": ["u", "u", "u", "u"],
            "video_a": ["a", "a", "c", "d"],
            "video_b": ["b", "a", "d", "e"],
            "criteria": ["c"] * 4,
            "score": [5.0, 3.0, np.nan, 50.0],
            "score_max": [np.nan, 10.0, 10.0, 100.0],
        }
    )
    data = ComparisonDataset.from_frame(frame).criteria["c"]
    assert rows(data) == [("u", "a", "b", 0.5), ("u", "d", "e", 0.5)]
    no_column = ComparisonDataset.from_frame(frame.drop(columns="score_max").iloc[:1])
    assert rows(no_column.criteria["c"]) == [("u", "a", "b", 0.5)]
    with pytest.raises(ValueError, match="score_max"):
        ComparisonDataset.from_frame(frame.assign(score=20.0, score_max=10.0))
    with pytest.raises(ValueError, match="missing column"):
        ComparisonDataset.from_frame(frame.drop(columns="video_b"))


def test_subset_reindexes_users_and_videos() -> None:
    data = read_comparisons(REFERENCE / "xs" / "comparisons.csv").criteria["largely_recommended"]
    part = data.subset(data.user_index < 3)
    assert part.n_users == 3
    assert set(rows(part)) <= set(rows(data))
    assert part.video_a_index.max() < part.n_videos and np.all(np.diff(part.user_index) >= 0)


def test_reads_a_tournesol_export_zip_without_score_max() -> None:
    dataset = read_comparisons(TINY_TOURNESOL)
    assert sorted(dataset.criteria) == ["importance", "largely_recommended"]
    with zipfile.ZipFile(TINY_TOURNESOL) as archive:
        raw = pd.read_csv(archive.open("comparisons.csv"))
    assert "score_max" not in raw.columns
    for name, data in dataset.criteria.items():
        assert data.n_comparisons <= int((raw["criteria"] == name).sum())
        assert np.abs(data.ratings).max() <= 1.0


def test_reads_a_csv_with_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.csv"
    path.write_text(
        "week_date,public_username,video_a,video_b,criteria,score,score_max\n"
        "2024-01-01,u1,a,b,c,-4,10\n"
        "2024-01-01,007,b,c,c,2,10\n"
    )
    data = read_comparisons(path).criteria["c"]
    assert list(data.user_ids) == ["007", "u1"]  # ids stay strings
    assert rows(data) == [("007", "b", "c", 0.2), ("u1", "a", "b", -0.4)]


def test_ids_that_all_look_like_numbers_stay_text(tmp_path: Path) -> None:
    """Every user and video id of the file reads as a number: they must stay the strings they
    are ("007" is not "7"), as the service stores them."""
    path = tmp_path / "comparisons.csv"
    path.write_text(
        "public_username,video_a,video_b,criteria,score\n"
        "007,0123,456,1,5\n"
        "12,456,0123,1,-3\n"
        ",456,0123,1,2\n"
    )
    data = read_comparisons(path).criteria["1"]
    assert list(data.user_ids) == ["007", "12"]
    assert list(data.video_ids) == ["0123", "456"]
    assert sorted(rows(data)) == [("007", "0123", "456", 0.5), ("12", "456", "0123", -0.3)]


def test_reads_an_archive_with_a_nested_comparisons_file(tmp_path: Path) -> None:
    buffer = io.StringIO("public_username,video_a,video_b,criteria,score\nu,a,b,c,3\n")
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("dataset/comparisons.csv", buffer.getvalue())
    assert rows(read_comparisons(path).criteria["c"]) == [("u", "a", "b", 0.3)]


def test_rows_with_a_missing_id_are_dropped() -> None:
    frame = pd.DataFrame(
        {
            "public_username": ["u", None, "u", "u"],
            "video_a": ["a", "a", None, "c"],
            "video_b": ["b", "b", "b", "d"],
            "criteria": ["c", "c", "c", None],
            "score": [1.0, 2.0, 3.0, 4.0],
        }
    )
    dataset = ComparisonDataset.from_frame(frame)
    assert list(dataset.criteria) == ["c"]
    assert rows(dataset.criteria["c"]) == [("u", "a", "b", 0.1)]
