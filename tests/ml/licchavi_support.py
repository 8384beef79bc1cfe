"""Shared data locations and small loaders for the Licchavi tests."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from ml.data import ComparisonDataset, CriterionComparisons, read_comparisons

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REFERENCE = SHARED_DATA / "licchavi-v1-reference"
TINY_TOURNESOL = SHARED_DATA / "tiny_tournesol.zip"
CRITERION = "largely_recommended"


@functools.cache
def reference_dataset(size: str) -> ComparisonDataset:
    return read_comparisons(REFERENCE / size / "comparisons.csv")


def reference_comparisons(size: str) -> CriterionComparisons:
    return reference_dataset(size).criteria[CRITERION]


def truth_global(size: str) -> pd.Series:
    truth = pd.read_csv(REFERENCE / size / "truth_global.csv")
    return truth.set_index("video")["true_score"]
