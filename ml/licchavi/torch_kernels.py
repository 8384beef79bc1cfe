"""The solvers' array primitives on torch: CUDA, the converged solver and large CPU problems."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ml.licchavi.kernels import DTypeName

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "bool": torch.bool,
}

# Every epoch is a chain of short memory-bound kernels. On a 2-core machine shared with other
# processes, OpenMP threads spend their time waiting for the busy core: measured on 500k
# comparisons, 3.6 s with one thread against 3.3 s with two on a quiet machine, but 17 s with
# two under load. One intra-op thread is the predictable choice; callers wanting more can
# raise CPU_THREADS.
CPU_THREADS = 1


class TorchKernels:
    """Tensors on one device; scatter_add_ rather than index_add_ (same sequential order on the
    CPU, twice as fast)."""

    backend = "torch"

    def __init__(self, device: str) -> None:
        self.device = device
        self._device = torch.device(device)

    def array(self, values: np.ndarray, dtype: DTypeName) -> torch.Tensor:
        array = np.ascontiguousarray(values)
        return torch.from_numpy(array).to(device=self._device, dtype=_DTYPES[dtype])

    def zeros(self, size: int, dtype: DTypeName) -> torch.Tensor:
        return torch.zeros(size, dtype=_DTYPES[dtype], device=self._device)

    def astype(self, values: torch.Tensor, dtype: DTypeName) -> torch.Tensor:
        return values.to(_DTYPES[dtype])

    def copy(self, values: torch.Tensor) -> torch.Tensor:
        return values.clone()

    def to_numpy(self, values: torch.Tensor) -> np.ndarray:
        return np.array(values.detach().cpu().numpy(), copy=True)

    def dtype_name(self, values: torch.Tensor) -> str:
        return str(values.dtype).removeprefix("torch.")

    def take(self, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return values.index_select(0, index)

    def scatter_add(self, size: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(size, dtype=values.dtype, device=values.device)
        return out.scatter_add_(0, index, values)

    def sign(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sign(values)

    def where(self, condition: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
        return torch.where(condition, a, b)

    def log(self, values: torch.Tensor) -> torch.Tensor:
        return torch.log(values)

    def sinh(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sinh(values)

    def clamp(
        self, values: torch.Tensor, low: float | None = None, high: float | None = None
    ) -> torch.Tensor:
        return values.clamp(low, high)

    def one_minus_exp(self, values: torch.Tensor) -> torch.Tensor:
        """−expm1(x), in float64 and rounded once for float32 input: the SIMD and the scalar
        float32 expm1 kernels differ in the last bit, and the faithful solver's sign(θ − ρ)
        steps turn such bits into whole learning-rate steps (up to 0.2 in a global score at
        100k comparisons between two CPU builds). Rounded once, the result is the same on both,
        and on NumPy."""
        if values.dtype == torch.float32:
            return torch.expm1(values.to(torch.float64)).neg_().to(torch.float32)
        return torch.expm1(values).neg_()

    def concatenate(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)

    def total(self, values: torch.Tensor) -> float:
        return float(values.sum())

    def count_nonzero(self, values: torch.Tensor) -> int:
        return int(torch.count_nonzero(values).item())

    def norm(self, values: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(values))

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a, b))

    def multiply(self, a: torch.Tensor, b: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.mul(a, b, out=out)

    @contextlib.contextmanager
    def compute_scope(self) -> Iterator[None]:
        """CPU_THREADS intra-op threads on the CPU, the previous setting restored afterwards."""
        if self._device.type != "cpu":
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(CPU_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
