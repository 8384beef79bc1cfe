"""Where a run computes: the device it resolves to and the kernels it uses there.

Kept apart from `kernels.py` (the NumPy primitives and their protocol) so that the torch kernels
can import the protocol's types without an import circle: this module imports both.
"""

from __future__ import annotations

import glob
import logging
import os

from ml.licchavi.kernels import Kernels, NumpyKernels
from ml.torch_import import TorchNotInstalled, require_torch

logger = logging.getLogger(__name__)


def cuda_may_exist() -> bool:
    """False when this machine certainly has no NVIDIA GPU, decided without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg"))


def resolve_device(device: str) -> str:
    """'auto' means CUDA when available. Torch is imported (and CUDA probed) only when the
    machine shows an NVIDIA device or CUDA is asked for explicitly; never at import time. An
    install without torch (the default one) runs 'auto' on the CPU."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and not cuda_may_exist():
        return "cpu"
    try:
        torch = require_torch("device 'cuda'")
    except TorchNotInstalled:
        if device == "cuda":
            raise
        logger.warning("an NVIDIA device is present but torch is not installed: running on the CPU")
        return "cpu"
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise RuntimeError("device: 'cuda' requested but CUDA is not available")
    return "cuda" if available else "cpu"


# "numpy" (the default) or "torch": the solvers' kernels on the CPU. The faithful solver's numbers
# are the same bits either way, the converged solver's the same to within rounding (1e-9).
CPU_KERNELS_VARIABLE = "LICCHAVI_CPU_KERNELS"


def kernels_for(device: str, solver: str) -> Kernels:
    """The kernels a run uses: torch for CUDA, NumPy for both solvers on the CPU unless
    LICCHAVI_CPU_KERNELS=torch. `device` is a resolved device ('cpu' or 'cuda'); `solver` is
    kept for callers, both solvers run on either kernel set."""
    del solver
    if device == "cpu":
        choice = os.environ.get(CPU_KERNELS_VARIABLE, "numpy").strip().lower() or "numpy"
        if choice not in ("numpy", "torch"):
            raise ValueError(f"{CPU_KERNELS_VARIABLE}: expected numpy or torch, got {choice!r}")
        if choice == "numpy":
            return NumpyKernels()
    if device != "cpu":
        require_torch(f"device {device!r}")
    else:
        require_torch(f"{CPU_KERNELS_VARIABLE}=torch")
    from ml.licchavi.torch_kernels import TorchKernels

    return TorchKernels(device)
