"""The converged solver: reaches its tolerance where it used to stall, is independent of row
order, and refuses to return scores it did not converge to."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.config import LicchaviConfig
from ml.data import ComparisonDataset, CriterionComparisons
from ml.licchavi import NotConverged, finished_result, train_criterion
from ml.licchavi.devices import CPU_KERNELS_VARIABLE
from ml.licchavi.problem import data_fingerprint
from ml.sybil import sybil_attack
from ml.synthetic import MAIN_CRITERION, SyntheticParams, generate


def criterion(frame: pd.DataFrame) -> CriterionComparisons:
    return ComparisonDataset.from_frame(frame).criteria[MAIN_CRITERION]


REPO = Path(__file__).resolve().parents[2]


def sparse_set(seed: int = 7) -> pd.DataFrame:
    params = SyntheticParams(n_users=50, n_videos=450, n_comparisons=5000, seed=seed)
    return generate(params).comparisons


def config(**changes: object) -> LicchaviConfig:
    values: dict[str, object] = {
        "solver": "converged",
        "device": "cpu",
        "compute_uncertainty": False,
    }
    values.update(changes)
    return LicchaviConfig.model_validate(values)


@pytest.mark.parametrize("w", [0.2, 0.5])
def test_small_coupling_reaches_the_tolerance(w: float) -> None:
    # Before the Newton system was damped, w=0.2 stopped after one iteration at stationarity 10.
    result = train_criterion(criterion(sparse_set()), config(w=w))
    assert result.converged and result.stationarity <= 1e-5


def test_attacked_set_reaches_the_tolerance() -> None:
    data = generate(SyntheticParams(n_users=50, n_videos=450, n_comparisons=5000, seed=7))
    attacked = sybil_attack(data, n_fake=20, comparisons_per_fake=100).comparisons
    result = train_criterion(criterion(attacked), config(w=0.2))
    assert result.converged and result.stationarity <= 1e-5


def test_row_order_and_orientation_do_not_change_the_scores() -> None:
    frame = sparse_set()
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    # The same comparison written the other way round: video_b first, the rating negated.
    flip = np.random.default_rng(2).random(len(shuffled)) < 0.5
    swapped = shuffled.copy()
    swapped.loc[flip, "video_a"] = shuffled.loc[flip, "video_b"].to_numpy()
    swapped.loc[flip, "video_b"] = shuffled.loc[flip, "video_a"].to_numpy()
    swapped.loc[flip, "score"] = -shuffled.loc[flip, "score"].to_numpy()
    first = train_criterion(criterion(frame), config(w=0.5))
    again = train_criterion(criterion(swapped), config(w=0.5))
    np.testing.assert_array_equal(first.video_ids, again.video_ids)
    np.testing.assert_array_equal(first.global_scores, again.global_scores)
    np.testing.assert_array_equal(first.local_scores, again.local_scores)
    # States still carry the fingerprint of the data as given: the worker compares it with its
    # own to resume a crashed run or reuse a criterion an earlier attempt finished.
    swapped_data = criterion(swapped)
    assert again.state.data_fingerprint == data_fingerprint(swapped_data)
    assert finished_result(swapped_data, config(w=0.5), again.state).global_scores.tolist() == (
        again.global_scores.tolist()
    )


def test_a_run_short_of_its_tolerance_raises_not_converged() -> None:
    with pytest.raises(NotConverged) as caught:
        train_criterion(criterion(sparse_set()), config(max_iterations=2))
    error = caught.value
    assert error.iterations == 2 and error.tolerance == 1e-5 and error.stationarity > 1e-5
    assert str(error).startswith(f"{MAIN_CRITERION}: the converged solver did not converge")
    assert "after 2 iterations" in str(error)


def test_global_uncertainty_covers_the_truth_where_videos_have_six_contributors_or_more() -> None:
    data = generate(SyntheticParams(n_users=100, n_videos=900, n_comparisons=10000, seed=11))
    result = train_criterion(criterion(data.comparisons), config(compute_uncertainty=True))
    truth = data.truth_global.set_index(data.truth_global.video.astype(str))["true_score"]
    true = truth.reindex(result.video_ids.astype(str)).to_numpy()
    # Scores have their own scale: map the truth onto it before asking for coverage.
    slope, intercept = np.polyfit(true, result.global_scores, 1)
    error = np.abs(result.global_scores - (slope * true + intercept))
    covered = error <= 1.96 * result.global_uncertainty
    several = result.n_contributors >= 6
    assert several.sum() >= 100
    assert 0.8 <= covered[several].mean() <= 0.99
    # Wider where comparisons are fewer.
    spread_vs_data = pd.Series(result.global_uncertainty).corr(
        pd.Series(result.n_comparisons), method="spearman"
    )
    assert spread_vs_data < -0.8


# torch made unimportable (None in sys.modules): the converged solver must run on NumPy alone.
TRAIN_WITH_TORCH_UNIMPORTABLE = """
import sys
sys.modules["torch"] = None
from ml.config import LicchaviConfig
from ml.data import ComparisonDataset
from ml.licchavi import train_criterion
from ml.synthetic import MAIN_CRITERION, SyntheticParams, generate

data = generate(SyntheticParams(n_users=50, n_videos=450, n_comparisons=5000, seed=7))
criterion = ComparisonDataset.from_frame(data.comparisons).criteria[MAIN_CRITERION]
result = train_criterion(criterion, LicchaviConfig(solver="converged", device="cpu"))
assert result.kernels == "numpy" and result.converged, (result.kernels, result.converged)
print(result.epochs)
"""


def test_converged_solver_on_the_cpu_runs_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(CPU_KERNELS_VARIABLE, None)
    completed = subprocess.run(
        [sys.executable, "-c", TRAIN_WITH_TORCH_UNIMPORTABLE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert int(completed.stdout.strip()) > 0


@pytest.mark.parametrize("w", [1.0, 0.2])
def test_numpy_and_torch_kernels_give_the_same_converged_scores(
    monkeypatch: pytest.MonkeyPatch, w: float
) -> None:
    # torch's kernels are the CUDA path; on the CPU they must agree with NumPy's to rounding.
    pytest.importorskip("torch")
    data = criterion(sparse_set())
    results = {}
    for kernels in ("numpy", "torch"):
        monkeypatch.setenv(CPU_KERNELS_VARIABLE, kernels)
        results[kernels] = train_criterion(data, config(w=w, compute_uncertainty=True))
    on_numpy, on_torch = results["numpy"], results["torch"]
    assert (on_numpy.kernels, on_torch.kernels) == ("numpy", "torch")
    assert on_numpy.converged and on_torch.converged
    assert on_numpy.epochs == on_torch.epochs
    for name in ("global_scores", "local_scores", "s", "global_uncertainty", "local_uncertainty"):
        np.testing.assert_allclose(
            getattr(on_numpy, name), getattr(on_torch, name), rtol=0, atol=1e-9, err_msg=name
        )
