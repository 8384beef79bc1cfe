"""End-to-end benchmark of `licchavi train` (read CSV, train, write scores) on synthetic sets."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml.metrics import evaluate  # noqa: E402
from ml.synthetic import SyntheticParams, generate, split_heldout  # noqa: E402


@dataclass(frozen=True)
class Size:
    name: str
    users: int
    videos: int
    comparisons: int
    target_seconds: float
    target_gb: float | None


SIZES = {
    # 30k, 200k and 1m have bench/quality.py's sparse shape (users = n/100, videos = 9n/100).
    "30k": Size("30k", 300, 2_700, 30_000, 1.0, None),
    "200k": Size("200k", 2_000, 18_000, 200_000, 4.0, None),
    "m": Size("m", 1_000, 9_000, 100_000, 2.0, None),
    "l": Size("l", 5_000, 40_000, 500_000, 10.0, 1.5),
    "1m": Size("1m", 10_000, 90_000, 1_000_000, 20.0, 2.0),
    "xl": Size("xl", 50_000, 400_000, 5_000_000, 120.0, 8.0),
}
HELDOUT_FRACTION = 0.05
SEED = 42


@dataclass
class Measurement:
    size: Size
    solver: str
    kernels: str  # "numpy on cpu", "torch on cuda", ... as the command reports it
    wall_seconds: float
    cpu_seconds: float
    peak_rss_gb: float
    read_seconds: float | None
    train_seconds: float | None
    total_seconds: float | None  # read + train + write, as the command reports it
    epochs: int
    spearman: float
    heldout_accuracy: float


def prepare(size: Size, cache: Path) -> Path:
    """Generate the set once (training comparisons, held-out comparisons, truth)."""
    directory = cache / f"{size.name}-{size.users}-{size.videos}-{size.comparisons}-seed{SEED}"
    if (directory / "heldout.csv").exists():
        return directory
    from ml.io import write_frame

    started = time.perf_counter()
    data = generate(
        SyntheticParams(
            n_users=size.users, n_videos=size.videos, n_comparisons=size.comparisons, seed=SEED
        )
    )
    data.write(directory)
    kept, held = split_heldout(data.comparisons, HELDOUT_FRACTION, seed=SEED)
    write_frame(directory / "comparisons.csv", kept)
    write_frame(directory / "heldout.csv", held)
    print(
        f"generated {size.name} in {time.perf_counter() - started:.1f} s -> {directory}",
        file=sys.stderr,
    )
    return directory


def train_command(data_dir: Path, scores_dir: Path, solver: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ml.cli",
        "train",
        "--input",
        str(data_dir / "comparisons.csv"),
        "--output",
        str(scores_dir),
        "--solver",
        solver,
        "--no-progress",
        *extra,
    ]


def run_training(command: list[str]) -> tuple[float, float, float, str]:
    """Wall time, CPU time (user + system), peak RSS in GB of the child alone (os.wait4), and
    its stderr."""
    stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"licchavi_bench_{os.getpid()}.err"
    with open(stderr_path, "w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = stderr_path.read_text()
    stderr_path.unlink()
    if process.returncode != 0:
        raise SystemExit(f"training failed ({process.returncode}):\n{text}")
    # ru_maxrss is in kilobytes on Linux.
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1e6, text


def measure(size: Size, solver: str, cache: Path, extra: list[str]) -> Measurement:
    data_dir = prepare(size, cache)
    scores_dir = cache / "scores" / f"{size.name}-{solver}"
    wall, cpu, peak_gb, log = run_training(train_command(data_dir, scores_dir, solver, extra))
    timings = re.search(r"read ([\d.]+) s, trained ([\d.]+) s, total ([\d.]+) s", log)
    epochs = re.findall(r"(\d+) epochs", log)
    kernels = re.findall(r"(\w+ on \w+)\n", log)
    report = evaluate(data_dir, scores_dir, data_dir / "heldout.csv")
    metrics = next(iter(report.values()))
    return Measurement(
        size=size,
        solver=solver,
        kernels=kernels[0] if kernels else "?",
        wall_seconds=wall,
        cpu_seconds=cpu,
        peak_rss_gb=peak_gb,
        read_seconds=float(timings.group(1)) if timings else None,
        train_seconds=float(timings.group(2)) if timings else None,
        total_seconds=float(timings.group(3)) if timings else None,
        epochs=int(epochs[0]) if epochs else 0,
        spearman=metrics["spearman"],
        heldout_accuracy=metrics["heldout_accuracy"],
    )


def markdown_table(measurements: list[Measurement]) -> str:
    """Wall time split into start-up (interpreter and imports), read, train and write."""
    lines = [
        "| set (users/videos/comparisons) | solver | kernels | wall s | start-up s | read s "
        "| train s | write s | CPU s | peak RSS GB | epochs | Spearman vs truth "
        "| held-out accuracy | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        target = f"≤ {m.size.target_seconds:g} s" + (
            f", ≤ {m.size.target_gb:g} GB" if m.size.target_gb else ""
        )
        met = m.wall_seconds <= m.size.target_seconds and (
            m.size.target_gb is None or m.peak_rss_gb <= m.size.target_gb
        )
        startup = None if m.total_seconds is None else m.wall_seconds - m.total_seconds
        write = None
        if None not in (m.total_seconds, m.read_seconds, m.train_seconds):
            write = m.total_seconds - m.read_seconds - m.train_seconds  # type: ignore[operator]
        cells = [
            f"{m.size.name} {m.size.users:,}/{m.size.videos:,}/{m.size.comparisons:,}",
            m.solver,
            m.kernels,
            f"{m.wall_seconds:.2f}",
            _optional(startup),
            _optional(m.read_seconds),
            _optional(m.train_seconds),
            _optional(write),
            f"{m.cpu_seconds:.2f}",
            f"{m.peak_rss_gb:.2f}",
            str(m.epochs),
            f"{m.spearman:.3f}",
            f"{m.heldout_accuracy:.3f}",
            target,
            "yes" if met else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_average() -> str:
    """1-minute load: the host is shared, and other work inflates wall times."""
    return f"{os.getloadavg()[0]:.1f}"


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="m,l", help="comma-separated among " + ", ".join(SIZES))
    parser.add_argument("--xl", action="store_true", help="also run the 5M-comparison set")
    parser.add_argument("--solvers", default="faithful", help="faithful, converged or both")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "out" / "licchavi")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    names = [name.strip() for name in args.sizes.split(",") if name.strip()]
    if args.xl and "xl" not in names:
        names.append("xl")
    unknown = [name for name in names if name not in SIZES]
    if unknown:
        parser.error(f"unknown size(s): {', '.join(unknown)}")
    extra = [item for override in args.overrides for item in ("--set", override)]
    measurements = []
    load_before = _load_average()
    for name in names:
        for solver in [s.strip() for s in args.solvers.split(",") if s.strip()]:
            measurement = measure(SIZES[name], solver, args.cache, extra)
            print(markdown_table([measurement]).splitlines()[-1], file=sys.stderr)
            measurements.append(measurement)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, load average before/after: {load_before} / "
        f"{_load_average()}"
    )
    print(markdown_table(measurements))


if __name__ == "__main__":
    main()
