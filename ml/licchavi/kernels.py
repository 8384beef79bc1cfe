"""Array primitives the solvers are written against, on NumPy (no torch import) or on torch.

Both solvers, the objective's terms, the uncertainties and the stationarity measure use only
the operations below plus Python's arithmetic operators (which NumPy arrays and torch tensors
share, in place ones included), so the same code runs on either. Both sides do the same float32
operations in the same order (gathers, sequential scatter-adds, one-rounding expm1, no fused
multiply-add), so a faithful run gives the same bits on NumPy as on torch's CPU kernels; the
converged solver's float64 results agree to rounding (1e-11). On the CPU both solvers run on
NumPy: `licchavi train` then never imports torch (1 to 3 s of start-up), and is as fast or
faster (docs/benchmarks.md, docs/solvers.md "The converged solver on NumPy").
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Literal, Protocol

import numpy as np

Array = Any  # a numpy.ndarray or a torch.Tensor, depending on the kernels
DTypeName = Literal["float32", "float64", "int64", "bool"]


class Kernels(Protocol):
    """The operations the solvers need beyond +, −, ×, /, abs(), comparisons and indexing."""

    backend: str  # "numpy" or "torch"
    device: str  # "cpu" or "cuda"

    def array(self, values: np.ndarray, dtype: DTypeName) -> Array: ...
    def zeros(self, size: int, dtype: DTypeName) -> Array: ...
    def astype(self, values: Array, dtype: DTypeName) -> Array: ...
    def copy(self, values: Array) -> Array: ...
    def to_numpy(self, values: Array) -> np.ndarray: ...
    def dtype_name(self, values: Array) -> str: ...
    def take(self, values: Array, index: Array) -> Array: ...
    def scatter_add(self, size: int, index: Array, values: Array) -> Array: ...
    def sign(self, values: Array) -> Array: ...
    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array: ...
    def log(self, values: Array) -> Array: ...
    def sinh(self, values: Array) -> Array: ...
    def clamp(
        self, values: Array, low: float | None = None, high: float | None = None
    ) -> Array: ...
    def one_minus_exp(self, values: Array) -> Array: ...
    def concatenate(self, parts: list[Array]) -> Array: ...
    def total(self, values: Array) -> float: ...
    def count_nonzero(self, values: Array) -> int: ...
    def norm(self, values: Array) -> float: ...
    def dot(self, a: Array, b: Array) -> float: ...
    def multiply(self, a: Array, b: Array | float, out: Array) -> Array: ...
    def compute_scope(self) -> contextlib.AbstractContextManager[None]: ...


class NumpyKernels:
    """CPU kernels on NumPy, the faithful solver's on the CPU."""

    backend = "numpy"
    device = "cpu"

    def array(self, values: np.ndarray, dtype: DTypeName) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=dtype)

    def zeros(self, size: int, dtype: DTypeName) -> np.ndarray:
        return np.zeros(size, dtype=dtype)

    def astype(self, values: np.ndarray, dtype: DTypeName) -> np.ndarray:
        return values.astype(dtype, copy=False)

    def copy(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, copy=True)

    def to_numpy(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, copy=True)

    def dtype_name(self, values: np.ndarray) -> str:
        return str(values.dtype)

    def take(self, values: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take(values, index)

    def scatter_add(self, size: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        # np.add.at accumulates unbuffered, in index order: torch's CPU scatter_add_ order.
        out = np.zeros(size, dtype=values.dtype)
        np.add.at(out, index, values)
        return out

    def sign(self, values: np.ndarray) -> np.ndarray:
        return np.sign(values)

    def where(self, condition: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.where(condition, a, b)

    def log(self, values: np.ndarray) -> np.ndarray:
        return np.log(values)

    def sinh(self, values: np.ndarray) -> np.ndarray:
        return np.sinh(values)

    def clamp(
        self, values: np.ndarray, low: float | None = None, high: float | None = None
    ) -> np.ndarray:
        return np.clip(values, low, high)

    def one_minus_exp(self, values: np.ndarray) -> np.ndarray:
        if values.dtype == np.float32:
            return (-np.expm1(values.astype(np.float64))).astype(np.float32)
        return -np.expm1(values)

    def concatenate(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def total(self, values: np.ndarray) -> float:
        # Reported sums only (history). NumPy's pairwise float32 sum and torch's cascade sum
        # round differently; summed in float64, the result is within torch's own rounding of
        # the exact value (the v1 reference's histories were summed by torch in float32).
        return float(values.sum(dtype=np.float64))

    def count_nonzero(self, values: np.ndarray) -> int:
        return int(np.count_nonzero(values))

    def norm(self, values: np.ndarray) -> float:
        return math.sqrt(self.dot(values, values))

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        # Not `a @ b` nor np.linalg.norm: those call the bundled BLAS, whose threads busy-wait
        # for the next call. On the shared 2-core machine (load 7) a 60k-element product took
        # 3.7 ms instead of 0.05, and the spinning threads slowed every NumPy call after it 5×.
        # einsum's own loop is as fast as one BLAS thread and never starts another.
        return float(np.einsum("i,i->", a, b, dtype=np.float64))

    def multiply(self, a: np.ndarray, b: Any, out: np.ndarray) -> np.ndarray:
        """a × b written into `out` (an existing array of a's shape), which is returned."""
        return np.multiply(a, b, out=out)

    def compute_scope(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()
