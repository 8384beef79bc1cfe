"""A coordinated promotion by fake accounts, added to a generated set with known truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.synthetic import COMPARISON_COLUMNS, SyntheticData


@dataclass(frozen=True)
class SybilAttack:
    """The attacked comparisons, the promoted video and the fake accounts' names."""

    comparisons: pd.DataFrame
    target: str
    fake_users: list[str]
    honest_contributors: int  # of the target, before the attack


def sybil_attack(
    data: SyntheticData,
    *,
    n_fake: int = 20,
    comparisons_per_fake: int = 100,
    honest_contributors: int = 5,
    seed: int = 0,
) -> SybilAttack:
    """Add ``n_fake`` accounts that each compare one video against other videos, always giving
    it the strongest rating.

    The target is, among the main criterion's videos with ``honest_contributors`` contributors
    (the nearest count that exists), the one whose true score is closest to the median: a video
    with room to climb and little honest data to hold it in place. Each fake account compares it
    with ``comparisons_per_fake`` distinct other compared videos drawn uniformly, on a random
    side. Only the main criterion is attacked.
    """
    criterion = data.params.criteria[0]
    frame = data.comparisons
    main = frame[frame["criteria"] == criterion]
    contributors = (
        pd.concat(
            [
                main[["public_username", "video_a"]].set_axis(["user", "video"], axis=1),
                main[["public_username", "video_b"]].set_axis(["user", "video"], axis=1),
            ]
        )
        .astype(str)
        .drop_duplicates()
        .groupby("video")
        .size()
    )
    gap = (contributors - honest_contributors).abs()
    candidates = contributors.index[gap == gap.min()]
    rows_truth = data.truth_global[data.truth_global["criteria"] == criterion]
    truth = pd.Series(
        rows_truth["true_score"].to_numpy(), index=rows_truth["video"].astype(str).to_numpy()
    )
    median = float(np.median(truth.reindex(contributors.index).to_numpy()))
    target = str(min(candidates, key=lambda video: (abs(truth[video] - median), video)))

    others = np.asarray(sorted(set(contributors.index) - {target}))
    if comparisons_per_fake > len(others):
        raise ValueError("more comparisons per fake account than other compared videos")
    rng = np.random.default_rng(seed)
    score_max = data.params.score_max
    fake_users = [f"zfake{i:04d}" for i in range(n_fake)]
    rows = []
    week = str(main["week_date"].astype(str).max())
    for user in fake_users:
        opponents = rng.choice(others, comparisons_per_fake, replace=False)
        target_on_b = rng.random(comparisons_per_fake) < 0.5
        rows.append(
            pd.DataFrame(
                {
                    "public_username": user,
                    "video_a": np.where(target_on_b, opponents, target),
                    "video_b": np.where(target_on_b, target, opponents),
                    "criteria": criterion,
                    "score": np.where(target_on_b, score_max, -score_max),
                    "score_max": score_max,
                    "week_date": week,
                }
            )
        )
    as_text = frame.astype({c: str for c in COMPARISON_COLUMNS if c not in ("score", "score_max")})
    attacked = pd.concat([as_text, *rows], ignore_index=True)
    return SybilAttack(
        comparisons=attacked[COMPARISON_COLUMNS],
        target=target,
        fake_users=fake_users,
        honest_contributors=int(contributors[target]),
    )
