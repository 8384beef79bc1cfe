"""Time and peak memory of `train_criterion` alone, faithful against converged, back to back.

Each run is a fresh subprocess that reads one of `bench/licchavi_bench.py`'s generated sets
(generated there once if missing), then trains it with every setting at its default but the
solver (uncertainty on, one CPU thread). Reported per run: wall and CPU time of the training
alone (`time.perf_counter`, `time.process_time`), peak RSS of the whole process (the loaded
comparisons included; `os.wait4`), iterations, the kernels, and the 1-minute load average before
and after (the machine is shared: compare CPU times when it is loaded). Usage:

    python bench/solver_speed.py [--sizes 30k,200k,1m,xl] [--solvers faithful,converged]
        [--repeat 1]

A solver may carry settings after colons: `converged:personal_tastes=false`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from licchavi_bench import SIZES, prepare  # noqa: E402

CHILD = """
import json, os, sys, time
from ml.config import load_config
from ml.data import read_comparisons
from ml.licchavi import train_criterion

data = next(iter(read_comparisons(sys.argv[1]).criteria.values()))
solver, *settings = sys.argv[2].split(":")
config = load_config(None, [f"solver={solver}", *settings]).model_copy(update={"device": "cpu"})
load = os.getloadavg()[0]
wall, cpu = time.perf_counter(), time.process_time()
result = train_criterion(data, config)
print(json.dumps({
    "comparisons": data.n_comparisons,
    "train_wall": time.perf_counter() - wall,
    "train_cpu": time.process_time() - cpu,
    "iterations": result.epochs,
    "kernels": result.kernels,
    "converged": result.converged,
    "load_before": load,
    "load_after": os.getloadavg()[0],
}))
"""


def run(data_dir: Path, solver: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir / "comparisons.csv"), solver],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{solver} on {data_dir.name} failed")
    figures: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    figures["peak_rss_gb"] = usage.ru_maxrss / 1e6  # kilobytes on Linux
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30k,200k,1m,xl")
    parser.add_argument("--solvers", default="faithful,converged")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "out" / "licchavi")
    args = parser.parse_args()
    print(
        "| set (users/videos/comparisons) | solver | kernels | train wall s | train CPU s "
        "| peak RSS GB | iterations | load before / after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sizes.split(","):
        size = SIZES[name]
        data_dir = prepare(size, args.cache)
        for _ in range(args.repeat):
            for solver in args.solvers.split(","):
                f = run(data_dir, solver)
                cells = [
                    f"{name} {size.users:,}/{size.videos:,}/{f['comparisons']:,}",
                    solver,
                    str(f["kernels"]),
                    f"{f['train_wall']:.2f}",
                    f"{f['train_cpu']:.2f}",
                    f"{f['peak_rss_gb']:.2f}",
                    str(f["iterations"]),
                    f"{f['load_before']:.1f} / {f['load_after']:.1f}",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
