"""The faithful solver reproduces the original v1 code's outputs on the reference sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml.config import LicchaviConfig
from ml.licchavi import CriterionResult, train_criterion
from tests.ml.licchavi_support import REFERENCE, reference_comparisons

TOLERANCE = 1e-4
# Rounding the original applied before writing history.json (decimals per term).
HISTORY_DECIMALS = {
    "fit": 0,
    "s": 0,
    "gen": 0,
    "reg": 0,
    "l2_norm": 3,
    "grad_sp": 4,
    "grad_norm": 4,
}


@pytest.fixture(scope="module", params=["xs", "s"])
def run(request: pytest.FixtureRequest) -> tuple[str, CriterionResult]:
    size = request.param
    config = LicchaviConfig(solver="faithful", device="cpu", compute_uncertainty=False)
    return size, train_criterion(reference_comparisons(size), config)


def test_global_scores_match(run: tuple[str, CriterionResult]) -> None:
    size, result = run
    expected = pd.read_csv(REFERENCE / size / "global_scores.csv").set_index("video")
    ours = pd.Series(result.global_scores, index=result.video_ids)
    assert set(ours.index) == set(expected.index)
    error = np.abs(ours[expected.index].to_numpy() - expected["raw_score"].to_numpy())
    assert error.max() < TOLERANCE


def test_local_scores_match(run: tuple[str, CriterionResult]) -> None:
    size, result = run
    expected = pd.read_csv(REFERENCE / size / "individual_scores.csv")
    ours = pd.Series(
        result.local_scores,
        index=pd.MultiIndex.from_arrays(
            [result.user_ids[result.local_user_index], result.video_ids[result.local_video_index]]
        ),
    )
    assert len(ours) == len(expected)
    keys = pd.MultiIndex.from_arrays([expected["public_username"], expected["video"]])
    error = np.abs(ours.reindex(keys).to_numpy() - expected["raw_score"].to_numpy())
    assert error.max() < TOLERANCE


def test_scales_match(run: tuple[str, CriterionResult]) -> None:
    size, result = run
    expected = pd.read_csv(REFERENCE / size / "s_params.csv").set_index("public_username")["s"]
    ours = pd.Series(result.s, index=result.user_ids)
    assert np.abs(ours[expected.index].to_numpy() - expected.to_numpy()).max() < TOLERANCE


def test_history_matches_up_to_the_original_rounding(run: tuple[str, CriterionResult]) -> None:
    size, result = run
    expected = json.loads((REFERENCE / size / "history.json").read_text())
    assert result.epochs == len(expected["fit"]) == len(result.history)
    for key, decimals in HISTORY_DECIMALS.items():
        ours = np.array([row[key] for row in result.history])
        reference = np.array(expected[key], dtype=float)
        # Rounded to `decimals`, so up to half a unit off, plus float32 noise on large values.
        allowed = 0.5 * 10.0**-decimals + 1e-7 * np.abs(reference) + TOLERANCE
        assert np.all(np.abs(ours - reference) <= allowed), key
