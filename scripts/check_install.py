"""What an install of the service resolves to on a clean index, by `pip install --dry-run --report`.

The default install (`.[ml,sweeps]`: the API, CPU workers, the engine on NumPy/SciPy) must pull
no torch and no CUDA package. The resolution ignores this machine's pip configuration (its
find-links, local mirrors and constraints: `PIP_CONFIG_FILE=/dev/null`, no `PIP_*` variables),
so it is the one an ordinary machine gets from the index (PyPI unless --index-url names one).

    python scripts/check_install.py                 # the default install: fails on torch/CUDA
    python scripts/check_install.py --sizes         # and the download size of each install

Exit status: 0 clean, 1 torch or a CUDA package in the default install, 2 pip could not resolve.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
PROJECT = "licchavi-service"
PYPI = "https://pypi.org/simple"
DEFAULT_EXTRAS = ("ml", "sweeps")
# The GPU worker's install, as its image stage makes it: the default plus the `gpu` extra, with
# torch pinned as in the Dockerfile (PyPI's x86_64 Linux torch is the CUDA build).
GPU_EXTRA = "gpu"
GPU_EXTRAS = (*DEFAULT_EXTRAS, GPU_EXTRA)
# torch, its CUDA runtime (nvidia-*, cuda-*) and its compiler (triton).
TORCH_OR_CUDA = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.+|cuda-.+)$")
# What pip prints when the index cannot be reached (as opposed to a resolution conflict).
UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
    r"Could not fetch URL|No matching distribution found for setuptools"
)


class ResolutionFailed(RuntimeError):
    """pip could not resolve the install; `unreachable` when it could not reach the index."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Package:
    name: str  # normalised (PEP 503)
    version: str
    url: str  # where pip would download it from


@dataclass(frozen=True)
class Resolution:
    requirements: tuple[str, ...]
    index_url: str
    packages: tuple[Package, ...]  # the project itself excluded

    def names(self) -> set[str]:
        return {package.name for package in self.packages}

    def torch_or_cuda(self) -> list[str]:
        return sorted(name for name in self.names() if TORCH_OR_CUDA.match(name))


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def clean_environment() -> dict[str, str]:
    """This process's environment without pip's configuration: no config file, no PIP_*."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return environment


def gpu_torch() -> str:
    """The torch pin of the Dockerfile's worker-gpu stage, e.g. 'torch==2.13.0'."""
    found = re.search(r"^ARG TORCH_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    if found is None:
        raise RuntimeError("the Dockerfile pins no TORCH_VERSION")
    return f"torch=={found.group(1)}"


def gpu_requirements() -> list[str]:
    """What the worker-gpu stage adds to the CPU worker's image: the `gpu` extra and the pin."""
    with (REPO / "pyproject.toml").open("rb") as file:
        extra = tomllib.load(file)["project"]["optional-dependencies"][GPU_EXTRA]
    return [*extra, gpu_torch()]


def requirement_of(extras: Sequence[str]) -> str:
    return f"{REPO}[{','.join(extras)}]" if extras else str(REPO)


def resolve(
    requirements: Sequence[str], *, index_url: str = PYPI, timeout: float = 600
) -> Resolution:
    """The packages a fresh install of `requirements` gets from `index_url`, nothing installed."""
    with tempfile.TemporaryDirectory(prefix="check-install-") as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--no-color",
            "--report",
            str(report),
            "--index-url",
            index_url,
            # Fail fast when the index is unreachable rather than after pip's default retries.
            "--retries",
            "1",
            "--timeout",
            "30",
            *requirements,
        ]
        try:
            done = subprocess.run(
                command,
                env=clean_environment(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise ResolutionFailed(
                f"pip did not resolve within {timeout:.0f} s", unreachable=True
            ) from error
        if done.returncode != 0 or not report.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise ResolutionFailed(
                f"pip install --dry-run failed ({done.returncode}) against {index_url}:\n{tail}",
                unreachable=bool(UNREACHABLE.search(done.stderr + done.stdout)),
            )
        body = json.loads(report.read_text())
    packages = tuple(
        sorted(
            (
                Package(
                    name=normalised(item["metadata"]["name"]),
                    version=item["metadata"]["version"],
                    url=item["download_info"]["url"],
                )
                for item in body["install"]
                if normalised(item["metadata"]["name"]) != PROJECT
            ),
            key=lambda package: package.name,
        )
    )
    return Resolution(tuple(requirements), index_url, packages)


def download_sizes(resolution: Resolution) -> dict[str, int]:
    """Each package's download in bytes, from the index's JSON pages (PEP 691/700 `size`): the
    pages pip itself reads to resolve, asked once per package."""
    import httpx

    sizes: dict[str, int] = {}
    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    with httpx.Client(timeout=60, headers=accept, follow_redirects=True) as client:
        for package in resolution.packages:
            filename = Path(urlsplit(package.url).path).name
            page = client.get(f"{resolution.index_url.rstrip('/')}/{package.name}/")
            page.raise_for_status()
            found = [f for f in page.json()["files"] if f["filename"] == filename]
            if not found or "size" not in found[0]:
                raise RuntimeError(f"{resolution.index_url} gives no size for {filename}")
            sizes[package.name] = int(found[0]["size"])
    return sizes


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-url", default=PYPI, help=f"the index to resolve on ({PYPI})")
    parser.add_argument(
        "--extras", default=",".join(DEFAULT_EXTRAS), help="the default install's extras"
    )
    parser.add_argument(
        "--sizes",
        action="store_true",
        help="also resolve the GPU worker's install and print each install's download size",
    )
    options = parser.parse_args(argv)
    extras = tuple(extra for extra in options.extras.split(",") if extra)

    try:
        default = resolve([requirement_of(extras)], index_url=options.index_url)
    except ResolutionFailed as error:
        print(error, file=sys.stderr)
        return 2
    print(f"default install .[{','.join(extras)}] on {options.index_url}:")
    print(f"  {len(default.packages)} packages: " + ", ".join(sorted(default.names())))
    offending = default.torch_or_cuda()
    if offending:
        print(f"  torch or CUDA in the default install: {', '.join(offending)}", file=sys.stderr)
        return 1
    print("  no torch, no CUDA package")
    if not options.sizes:
        return 0

    try:
        gpu = resolve([requirement_of(GPU_EXTRAS), gpu_torch()], index_url=options.index_url)
    except ResolutionFailed as error:
        print(error, file=sys.stderr)
        return 2
    default_sizes = download_sizes(default)
    gpu_sizes = download_sizes(gpu)
    added = sorted(gpu.names() - default.names())
    torch_part = sum(gpu_sizes[name] for name in gpu_sizes if TORCH_OR_CUDA.match(name))
    print(f"gpu worker install .[{','.join(GPU_EXTRAS)}] + {gpu_torch()}:")
    print(f"  adds {len(added)} packages: {', '.join(added)}")
    print("download sizes (wheels, compressed):")
    print(f"  default (API + CPU worker): {_megabytes(sum(default_sizes.values()))}")
    print(f"  gpu worker:                 {_megabytes(sum(gpu_sizes.values()))}")
    print(f"    of which torch and CUDA:  {_megabytes(torch_part)}")
    for name in sorted(gpu_sizes, key=lambda n: -gpu_sizes[n])[:8]:
        print(f"    {name:32} {_megabytes(gpu_sizes[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
