"""Global Spearman against the truth when ρ is re-estimated from the users whose taste it serves.

The personal re-fit (ml/licchavi/personalisation.py) finds the users whose slope on ρ is negative
and those tied to a second shared taste; this trains the converged solver again on the other
users' comparisons alone and reports the global scores' Spearman against the truth next to v1's
and the default's (docs/solvers.md, "Personal scores", item 2). Usage:

    python bench/global_majority.py [--seeds 7,8] [--sets typical,inverted,niche]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import build_set  # noqa: E402

from ml.config import LicchaviConfig  # noqa: E402
from ml.data import ComparisonDataset  # noqa: E402
from ml.licchavi.kernels import NumpyKernels  # noqa: E402
from ml.licchavi.personalisation import UserComparisons, personalise  # noqa: E402
from ml.licchavi.problem import Problem  # noqa: E402
from ml.licchavi.trainer import train_criterion  # noqa: E402
from ml.metrics import spearman  # noqa: E402
from ml.synthetic import MAIN_CRITERION  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=30_000)
    parser.add_argument("--sets", default="typical,inverted,niche")
    parser.add_argument("--seeds", default="7,8")
    args = parser.parse_args(argv)
    config = LicchaviConfig.model_validate({"device": "cpu", "compute_uncertainty": False})
    print("| set | seed | v1 | default | majority only | users kept |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in (int(text) for text in args.seeds.split(",")):
        for name in args.sets.split(","):
            truth = build_set(name, args.comparisons, seed)
            data = ComparisonDataset.from_frame(truth.comparisons).criteria[MAIN_CRITERION]
            default = train_criterion(data, config)
            v1 = train_criterion(data, config.model_copy(update={"solver": "faithful"}))
            videos = default.video_ids.astype(str)
            true = truth.global_truth.reindex(videos).to_numpy()
            users = UserComparisons.of(Problem.build(data.canonical(), NumpyKernels(), "float64"))
            personal = personalise(users, default.global_scores, default.s, 3.0)
            kept = ~personal.second_taste & (personal.slope > 0)
            majority = train_criterion(
                data.subset(np.isin(data.user_index, np.flatnonzero(kept))), config
            )
            # A video only the excluded users compared keeps the prior's score, 0.
            scores = dict(zip(majority.video_ids.astype(str), majority.global_scores, strict=True))
            again = np.array([scores.get(video, 0.0) for video in videos])
            print(
                f"| {name} | {seed} | {spearman(v1.global_scores, true):.3f} | "
                f"{spearman(default.global_scores, true):.3f} | {spearman(again, true):.3f} | "
                f"{int(kept.sum())} / {users.n_users} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
