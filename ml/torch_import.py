"""torch as an optional dependency: imported only on the paths that need it, with one line naming
the `gpu` extra when it is not installed."""

from __future__ import annotations

from types import ModuleType

# The default install (API, CPU workers, `licchavi train` with either solver) has no torch;
# GPU workers install it through this extra.
GPU_EXTRA = "gpu"
INSTALL_HINT = f"install the `{GPU_EXTRA}` extra: pip install 'licchavi-service[{GPU_EXTRA}]'"


class TorchNotInstalled(RuntimeError):
    """A run asked for something written in torch (CUDA or the torch CPU kernels) where torch
    is not installed."""

    def __init__(self, purpose: str) -> None:
        super().__init__(f"{purpose} needs torch, which is not installed; {INSTALL_HINT}")
        self.purpose = purpose


def require_torch(purpose: str) -> ModuleType:
    """The torch module, or TorchNotInstalled saying that `purpose` needs it."""
    try:
        import torch
    except ImportError as error:
        raise TorchNotInstalled(purpose) from error
    return torch
