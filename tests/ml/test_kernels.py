"""NumPy and torch kernels: the same random stream, resumable across kernels, no torch import."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.config import LicchaviConfig
from ml.data import CriterionComparisons
from ml.licchavi import (
    CriterionResult,
    EpochReport,
    LicchaviState,
    TrainingCancelled,
    train_criterion,
)
from ml.licchavi.devices import CPU_KERNELS_VARIABLE, cuda_may_exist, kernels_for
from ml.licchavi.random_draws import RandomBits, initial_state
from tests.ml.licchavi_support import reference_comparisons

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [0, 7, 2**33 + 5])
def test_random_bits_are_torch_randint_of_the_seeded_generator(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    assert np.array_equal(generator.get_state().numpy(), initial_state(seed))
    bits = RandomBits(initial_state(seed))
    # Chunks that cross the Mersenne Twister's 624-word blocks at various offsets.
    for size in (5, 619, 1, 624, 1300, 3):
        expected = torch.randint(2, size=(1, size), generator=generator)[0].numpy()
        np.testing.assert_array_equal(bits.draw(size), expected)
        # The saved state continues the same stream in torch and in NumPy alike.
        resumed = torch.Generator()
        resumed.set_state(torch.from_numpy(bits.state()))
        ahead = torch.randint(2, size=(40,), generator=resumed).numpy()
        np.testing.assert_array_equal(RandomBits(bits.state()).draw(40), ahead)
        np.testing.assert_array_equal(RandomBits(generator.get_state().numpy()).draw(40), ahead)


def _train(
    data: CriterionComparisons,
    kernels: str,
    *,
    callback: Callable[[EpochReport], bool] | None = None,
    initial_state: LicchaviState | None = None,
) -> CriterionResult:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CPU_KERNELS_VARIABLE, kernels)
        return train_criterion(
            data,
            LicchaviConfig(solver="faithful", device="cpu"),
            callback=callback,
            initial_state=initial_state,
        )


def test_a_run_interrupted_on_numpy_resumes_on_torch_to_the_same_bits() -> None:
    data = reference_comparisons("s")
    uninterrupted = _train(data, "numpy")

    def stop_at_twenty(report: EpochReport) -> bool:
        return report.epoch < 20

    with pytest.raises(TrainingCancelled) as cancelled:
        _train(data, "numpy", callback=stop_at_twenty)
    assert cancelled.value.state is not None
    resumed = _train(data, "torch", initial_state=cancelled.value.state)
    for name in ("global_scores", "local_scores", "s"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(uninterrupted, name))
    assert resumed.kernels == "torch" and uninterrupted.kernels == "numpy"
    assert resumed.epochs == uninterrupted.epochs


def test_the_cpu_kernels_are_numpy_for_both_solvers_unless_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CPU_KERNELS_VARIABLE, raising=False)
    assert kernels_for("cpu", "faithful").backend == "numpy"
    assert kernels_for("cpu", "converged").backend == "numpy"
    monkeypatch.setenv(CPU_KERNELS_VARIABLE, "torch")
    assert kernels_for("cpu", "faithful").backend == "torch"
    assert kernels_for("cpu", "converged").backend == "torch"
    monkeypatch.setenv(CPU_KERNELS_VARIABLE, "gpu")
    with pytest.raises(ValueError, match=CPU_KERNELS_VARIABLE):
        kernels_for("cpu", "faithful")


TRAIN_WITHOUT_TORCH = """
import sys
from ml.cli import ml_app
try:
    ml_app(sys.argv[1:])
except SystemExit as exit:
    if exit.code:
        raise
assert "torch" not in sys.modules, "torch was imported"
"""


def test_licchavi_train_on_the_cpu_never_imports_torch(tmp_path: Path) -> None:
    if cuda_may_exist():
        pytest.skip("device=auto probes CUDA through torch on a machine with an NVIDIA device")
    source = REPO.parent / "shared" / "data" / "licchavi-v1-reference" / "xs" / "comparisons.csv"
    output = tmp_path / "scores"
    command = ["--input", str(source), "--output", str(output), "--no-progress"]
    for warm in ([], ["--warm-start", str(output / "state.pt")]):
        completed = subprocess.run(
            [sys.executable, "-c", TRAIN_WITHOUT_TORCH, "train", *command, *warm],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        assert (output / "global_scores.csv").is_file()
