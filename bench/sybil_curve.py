"""Rank of a promoted video against the number of fake accounts, with and without trusted users.

On the typical generated set (300 users, 2,700 videos, 30k comparisons by default; the shape of
bench/quality.py) `ml/sybil.py` adds 0, 1, 2, 5, 10, 20, 50 fake accounts, each comparing the
target (5 honest contributors, true score nearest the median) with 100 other videos and giving
it the strongest rating. Runs: the faithful solver (v1), the converged solver without trust
data, with every honest user trusted, and with a random 20 % of the honest users trusted.
The lift is (target rank without fakes) − (target rank with them), rank 1 being the top.
Prints two markdown tables (ranks, lifts) and the checks of issue 14 item 5; --plot writes a PNG.

    python bench/sybil_curve.py [--comparisons 30000] [--fakes 0,1,2,5,10,20,50] [--plot FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml.config import LicchaviConfig  # noqa: E402
from ml.data import ComparisonDataset  # noqa: E402
from ml.licchavi import voting_rights  # noqa: E402
from ml.licchavi.trainer import NotConverged, train_criterion  # noqa: E402
from ml.sybil import sybil_attack  # noqa: E402
from ml.synthetic import MAIN_CRITERION, SyntheticParams, generate  # noqa: E402

FAKES = (0, 1, 2, 5, 10, 20, 50)
PARTIAL_TRUST = 0.2


@dataclass(frozen=True)
class Run:
    name: str
    solver: str
    trust: str  # none, honest or partial


RUNS = (
    Run("faithful (v1)", "faithful", "none"),
    Run("converged, no trust data", "converged", "none"),
    Run("converged, honest trusted", "converged", "honest"),
    Run("converged, 20 % trusted", "converged", "partial"),
)


def target_rank(
    frame: pd.DataFrame, target: str, run: Run, trusted: dict[str, list[str]]
) -> int | None:
    """The target's rank among all compared videos (1 = top) after training ``run``; None when
    the converged solver does not reach its tolerance."""
    data = ComparisonDataset.from_frame(frame).criteria[MAIN_CRITERION]
    if run.trust != "none":
        data = data.with_trusted(trusted[run.trust])
    try:
        result = train_criterion(data, LicchaviConfig(solver=run.solver, compute_uncertainty=False))
    except NotConverged as error:
        print(error, file=sys.stderr)
        return None
    scores = pd.Series(result.global_scores, index=result.video_ids.astype(str))
    return int((scores > scores[target]).sum()) + 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=30_000)
    parser.add_argument("--fakes", default=",".join(map(str, FAKES)))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=None, help="write the curve as a PNG")
    parser.add_argument(
        "--bias", type=float, default=None, help="untrusted budget's constant part (default: ours)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="its share of the trusted rights (default: ours)"
    )
    args = parser.parse_args(argv)
    if args.bias is not None:
        voting_rights.OVER_TRUST_BIAS = args.bias
    if args.scale is not None:
        voting_rights.OVER_TRUST_SCALE = args.scale
    counts = [int(item) for item in args.fakes.split(",")]
    comparisons = args.comparisons
    params = SyntheticParams.model_validate(
        {
            "n_comparisons": comparisons,
            "seed": args.seed,
            "n_users": max(10, comparisons // 100),
            "n_videos": max(20, comparisons * 9 // 100),
        }
    )
    data = generate(params)
    honest = sorted(data.comparisons["public_username"].astype(str).unique())
    rng = np.random.default_rng(args.seed)
    partial = sorted(rng.choice(honest, round(PARTIAL_TRUST * len(honest)), replace=False))
    trusted = {"honest": honest, "partial": [str(user) for user in partial]}

    ranks: dict[str, dict[int, int | None]] = {run.name: {} for run in RUNS}
    # The fake accounts of a smaller attack are the first ones of a larger one (same seed).
    attacks = {count: sybil_attack(data, n_fake=count, seed=args.seed) for count in counts}
    attack = attacks[counts[-1]]
    target = attack.target
    started = time.perf_counter()
    for run in RUNS:  # run by run, the slowest (partial trust) last
        for count in counts:
            rank = target_rank(attacks[count].comparisons, target, run, trusted)
            ranks[run.name][count] = rank
            print(
                f"{run.name}, {count} fakes: rank {_cell(rank)} "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    n_videos = int(
        pd.concat([data.comparisons["video_a"], data.comparisons["video_b"]]).astype(str).nunique()
    )
    print(
        f"target {target}, {attack.honest_contributors} honest contributors, {n_videos} "
        f"compared videos, {len(honest)} honest users ({len(partial)} in the 20 % sample); "
        f"untrusted budget {voting_rights.OVER_TRUST_BIAS:g} + "
        f"{voting_rights.OVER_TRUST_SCALE:g} × trusted contributors\n"
    )
    header = "| run | " + " | ".join(f"{count} fakes" for count in counts) + " |"
    rule = "| --- |" + " --- |" * len(counts)
    print("Target rank (1 = top):\n")
    print(header + "\n" + rule)
    for run in RUNS:
        print(f"| {run.name} | " + " | ".join(_cell(ranks[run.name][c]) for c in counts) + " |")
    baseline = counts[0]
    lifts = {run.name: {c: _lift(ranks[run.name], baseline, c) for c in counts} for run in RUNS}
    print(f"\nLift (rank with {baseline} fakes − rank with n fakes):\n")
    print(header + "\n" + rule)
    for run in RUNS:
        print(f"| {run.name} | " + " | ".join(_cell(lifts[run.name][c]) for c in counts) + " |")

    if 20 in counts:
        v1 = lifts[RUNS[0].name][20]
        plain = lifts[RUNS[1].name][20]
        trusted_lift = lifts[RUNS[2].name][20]
        if v1 is not None and plain is not None and trusted_lift is not None:
            print(
                f"\n20 fakes: no trust data lifts {plain} ≤ v1's {v1}: {plain <= v1}; honest "
                f"users trusted lift {trusted_lift} < {v1}/10: {trusted_lift < v1 / 10}"
            )
    if args.plot is not None:
        _plot(args.plot, counts, ranks, n_videos)
    return 0


def _cell(value: int | None) -> str:
    return "not converged" if value is None else str(value)


def _lift(ranks: dict[int, int | None], baseline: int, count: int) -> int | None:
    before, after = ranks[baseline], ranks[count]
    return None if before is None or after is None else before - after


def _plot(
    path: Path, counts: list[int], ranks: dict[str, dict[int, int | None]], n_videos: int
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    positions = range(len(counts))
    for name, by_count in ranks.items():
        values = [np.nan if by_count[c] is None else by_count[c] for c in counts]
        axis.plot(positions, values, marker="o", label=name)
    axis.set_xticks(list(positions), [str(c) for c in counts])
    axis.set_xlabel("fake accounts (100 comparisons each)")
    axis.set_ylabel("rank of the promoted video (1 = top)")
    axis.set_ylim(n_videos, 0)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
