"""Where torch is missing: 'auto' falls back to the CPU, and each path that needs torch says so in
one line naming the `gpu` extra (torch is made unimportable here with a None in sys.modules)."""

import sys

import pytest

from ml.licchavi import devices
from ml.licchavi.kernels import NumpyKernels
from ml.torch_import import INSTALL_HINT, TorchNotInstalled, require_torch


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delenv(devices.CPU_KERNELS_VARIABLE, raising=False)


@pytest.mark.usefixtures("no_torch")
def test_auto_runs_on_the_cpu_where_an_nvidia_device_shows_but_torch_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(devices, "cuda_may_exist", lambda: True)
    assert devices.resolve_device("auto") == "cpu"
    assert isinstance(devices.kernels_for("cpu", "faithful"), NumpyKernels)
    assert isinstance(devices.kernels_for("cpu", "converged"), NumpyKernels)
    with pytest.raises(TorchNotInstalled, match=r"^device 'cuda' needs torch"):
        devices.resolve_device("cuda")


@pytest.mark.usefixtures("no_torch")
@pytest.mark.parametrize(
    ("device", "solver", "kernels", "purpose"),
    [
        ("cuda", "faithful", None, "device 'cuda'"),
        ("cpu", "faithful", "torch", "LICCHAVI_CPU_KERNELS=torch"),
    ],
)
def test_each_torch_path_names_the_gpu_extra(
    monkeypatch: pytest.MonkeyPatch, device: str, solver: str, kernels: str | None, purpose: str
) -> None:
    if kernels is not None:
        monkeypatch.setenv(devices.CPU_KERNELS_VARIABLE, kernels)
    with pytest.raises(TorchNotInstalled) as raised:
        devices.kernels_for(device, solver)
    message = str(raised.value)
    assert message == f"{purpose} needs torch, which is not installed; {INSTALL_HINT}"
    assert "\n" not in message and "[gpu]" in message


def test_require_torch_returns_the_module_where_it_is_installed() -> None:
    # CI installs the CPU build (`make install-dev`), so this runs there.
    assert require_torch("a test").__name__ == "torch"
