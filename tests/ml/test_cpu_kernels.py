"""The faithful solver gives the same bits on NumPy and on torch's CPU kernels, SIMD or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.licchavi.devices import CPU_KERNELS_VARIABLE

REPO = Path(__file__).resolve().parents[2]

# Trains a generated set of 100k comparisons (where float32 last bits, turned into sign(θ − ρ)
# steps, moved global scores by up to 0.2 between kernel sets) and saves every parameter.
TRAIN = """
import sys
import numpy as np
from ml.config import LicchaviConfig
from ml.data import ComparisonDataset
from ml.licchavi import train_criterion
from ml.synthetic import SyntheticParams, generate

data = generate(SyntheticParams(n_users=1000, n_videos=9000, n_comparisons=100_000, seed=5))
dataset = ComparisonDataset.from_frame(data.comparisons)
result = train_criterion(
    dataset.criteria["largely_recommended"],
    LicchaviConfig(solver="faithful", device="cpu", compute_uncertainty=False),
)
np.savez(sys.argv[1], rho=result.global_scores, theta=result.local_scores, s=result.s)
"""


def train_with_kernels(kernels: str, capability: str | None, output: Path) -> dict[str, np.ndarray]:
    env = {**os.environ, "PYTHONPATH": str(REPO), CPU_KERNELS_VARIABLE: kernels}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    subprocess.run(
        [sys.executable, "-c", TRAIN, str(output)], env=env, check=True, timeout=300, cwd=REPO
    )
    with np.load(output) as saved:
        return {name: saved[name] for name in saved.files}


def test_numpy_and_torch_kernels_give_the_same_scores(tmp_path: Path) -> None:
    on_numpy = train_with_kernels("numpy", None, tmp_path / "numpy.npz")
    on_torch = train_with_kernels("torch", None, tmp_path / "torch.npz")
    for name in ("rho", "theta", "s"):
        np.testing.assert_array_equal(on_numpy[name], on_torch[name], err_msg=name)


def test_scalar_and_simd_kernels_give_the_same_scores(tmp_path: Path) -> None:
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU has no SIMD kernels to compare against")
    simd = train_with_kernels("torch", None, tmp_path / "simd.npz")
    scalar = train_with_kernels("torch", "default", tmp_path / "scalar.npz")
    for name in ("rho", "theta", "s"):
        np.testing.assert_array_equal(simd[name], scalar[name], err_msg=name)
