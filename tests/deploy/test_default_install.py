"""The default install has no torch: it resolves without torch or CUDA on a clean index, and its
paths (`licchavi train` with either solver, the API, a worker training a run, a sweep) run
in processes where torch cannot be imported and is never tried; where torch is needed, one line
names the `gpu` extra."""

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.conftest import REPO, service_missing
from tests.helpers import free_port, interrupt, wait_for
from tests.torchless import Torchless, torchless
from tests.workers.training_support import admin_headers

DEMO = REPO / "app" / "demo" / "comparisons.csv"
HINT = "install the `gpu` extra: pip install 'licchavi-service[gpu]'"
SWEEP_YAML = """
name: torchless holdout
parameters:
  w: {values: [1]}
repeats: {seeds: [0]}
evaluation: {kind: holdout, folds: 2, split_by: user}
include_baseline: false
"""


def check_install() -> ModuleType:
    """scripts/check_install.py, the resolution check CI and `make check-install` run."""
    spec = importlib.util.spec_from_file_location(
        "check_install", REPO / "scripts" / "check_install.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_default_install_resolves_without_torch_on_a_clean_index() -> None:
    checker = check_install()
    installs = {
        "default": [checker.requirement_of(checker.DEFAULT_EXTRAS)],
        "dev": [checker.requirement_of((*checker.DEFAULT_EXTRAS, "dev"))],
        # The control: the same check sees torch where an install has it. The GPU worker's
        # image installs these over the CPU worker's (`make check-install` sizes it whole).
        "gpu": checker.gpu_requirements(),
    }
    # This machine's pip configuration (local wheels and mirrors, a torch cap) is left out: the
    # resolution is an ordinary machine's, on PyPI, which CI reaches; a failure to reach it fails
    # in CI and skips elsewhere.
    with ThreadPoolExecutor(len(installs)) as pool:
        futures = {name: pool.submit(checker.resolve, wanted) for name, wanted in installs.items()}
        try:
            resolved = {name: future.result() for name, future in futures.items()}
        except checker.ResolutionFailed as error:
            if error.unreachable:
                service_missing("the package index", error)
            raise
    assert resolved["default"].torch_or_cuda() == []
    assert resolved["dev"].torch_or_cuda() == []
    assert {"numpy", "scipy", "fastapi", "celery", "optuna"} <= resolved["default"].names()
    gpu = resolved["gpu"]
    assert "torch" in gpu.names()
    assert [p.version for p in gpu.packages if p.name == "torch"] == [checker.gpu_torch()[7:]]
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        # PyPI's x86_64 Linux torch is the CUDA build: the reason it is not in the default.
        assert any(name.startswith("nvidia-") for name in gpu.torch_or_cuda())


def _torchless_train(
    blocker: Torchless, output: Path, *arguments: str, **environment: str
) -> subprocess.CompletedProcess[str]:
    """`licchavi train` on the demo comparisons, with torch unimportable."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "train",
            "-i",
            str(DEMO),
            "-o",
            str(output),
            "--no-progress",
            *arguments,
        ],
        env=blocker.environment({**os.environ, **environment}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_licchavi_train_runs_the_faithful_solver_without_torch(tmp_path: Path) -> None:
    blocker = torchless(tmp_path / "torchless")
    done = _torchless_train(blocker, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "numpy on cpu" in done.stdout + done.stderr
    assert (tmp_path / "out" / "global_scores.csv").exists()
    assert blocker.loaded_in() >= 1
    assert blocker.attempts() == ""


@pytest.mark.parametrize(
    ("arguments", "environment", "purpose"),
    [
        (["--device", "cuda"], {}, "device 'cuda'"),
        ([], {"LICCHAVI_CPU_KERNELS": "torch"}, "LICCHAVI_CPU_KERNELS=torch"),
    ],
)
def test_what_needs_torch_fails_in_one_line_naming_the_gpu_extra(
    tmp_path: Path, arguments: list[str], environment: dict[str, str], purpose: str
) -> None:
    blocker = torchless(tmp_path / "torchless")
    done = _torchless_train(blocker, tmp_path / "out", *arguments, **environment)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: training failed: {purpose} needs torch, which is not installed; {HINT}"
    ]


def test_the_converged_solver_runs_without_torch(tmp_path: Path) -> None:
    blocker = torchless(tmp_path / "torchless")
    done = _torchless_train(blocker, tmp_path / "out", "--solver", "converged")
    assert done.returncode == 0, done.stderr
    assert blocker.attempts() == ""


def test_the_service_serves_and_trains_without_torch(tmp_path: Path) -> None:
    """`make run`'s command: the API, its supervised worker, a run with the default solver and a sweep."""
    blocker = torchless(tmp_path / "torchless")
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--demo"],
        env=blocker.environment({**os.environ, "AUTO_TRAIN_DELAY_SECONDS": "0.5"}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for("the API to be ready", lambda: client.get("/readyz").status_code == 200, 90)
            headers = admin_headers()  # same SQLite file: DATA_DIR is shared with the server
            # Loading the demo data queued an auto run, with the default (converged) settings.
            run_id = wait_for(
                "the demo's auto run to publish",
                lambda: client.get("/api/v1/scores").json()["run_id"],
                150,
            )
            run = client.get(f"/api/v1/training-runs/{run_id}").json()
            assert (run["status"], run["solver"]) == ("succeeded", "converged")

            submitted = client.post(
                "/api/v1/sweeps",
                content=SWEEP_YAML,
                headers={**headers, "Content-Type": "application/yaml"},
            )
            assert submitted.status_code == 202, submitted.text
            sweep = wait_for(
                "the sweep to finish",
                lambda: (
                    (b := client.get(submitted.headers["Location"]).json())["status"]
                    in ("completed", "cancelled", "failed")
                    and b
                ),
                120,
            )
            assert sweep["status"] == "completed", sweep
            assert blocker.attempts() == ""

            # A run that needs CUDA is refused, saying why: only a worker on the gpu queue (with
            # the gpu extra) trains one, and none reads it here. (On such a worker without torch
            # it fails in one line: the CLI test above.)
            refused = client.post(
                "/api/v1/training-runs", json={"config": {"device": "cuda"}}, headers=headers
            )
            assert refused.status_code == 409, refused.text
            assert "no live worker reads the gpu queue" in refused.json()["detail"]
    finally:
        interrupt(server)
        log.close()
    # The API process and the supervisor's worker started with the blocker; the worker's pool
    # processes are forked from it and inherit it.
    assert blocker.loaded_in() >= 2
    tried = blocker.attempts()
    assert all("ml/torch_import.py" in attempt for attempt in tried.split("--- pid ")[1:]), tried
