"""Synthetic comparisons drawn from the continuous Bradley–Terry model, with their ground truth."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ml.io import write_frame

MAIN_CRITERION = "largely_recommended"
COMPARISON_COLUMNS = [
    "public_username",
    "video_a",
    "video_b",
    "criteria",
    "score",
    "score_max",
    "week_date",
]
# Rejection rounds for duplicate pairs; only exhausted when a user asks for nearly all pairs.
MAX_DRAW_ROUNDS = 200


class SyntheticParams(BaseModel):
    """Parameters of the generator; the defaults mirror the reference sets' generator."""

    # An infinite rate or size would overflow the counts derived from it.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_users: int = Field(1000, ge=1)
    n_videos: int = Field(9000, ge=2)
    n_comparisons: int | None = Field(
        None, ge=1, description="comparisons (pairs) of the main criterion"
    )
    comps_per_video: float = Field(
        10.0, gt=0, description="used when n_comparisons is None: n_comparisons = this × n_videos"
    )
    criteria: list[str] = Field(default_factory=lambda: [MAIN_CRITERION], min_length=1)
    p_extra_criteria: float = Field(
        0.5, ge=0, le=1, description="chance that a comparison also rates each further criterion"
    )
    criteria_correlation: float = Field(
        0.6, ge=-1, le=1, description="correlation of each further criterion's truth with the first"
    )
    seed: int = Field(42, ge=0)
    indiv_noise: float = Field(0.3, ge=0, description="std of a user's deviation from the truth")
    sharpness: float = Field(1.0, ge=0, description="scale of true scores inside Bradley–Terry")
    scale_sigma: float = Field(
        0.0,
        ge=0,
        description="lognormal sigma of each user's own sharpness factor (how extreme their"
        " ratings are for the same differences); 0: every user rates alike",
    )
    pop_sigma: float = Field(1.0, ge=0, description="lognormal sigma of video popularity")
    act_sigma: float = Field(1.2, ge=0, description="lognormal sigma of user activity")
    fraction_adversarial: float = Field(0.0, ge=0, le=1)
    adversarial_mode: Literal["reverse", "promote"] = "reverse"
    n_targets: int = Field(5, ge=1, description="videos pushed by adversaries in 'promote' mode")
    fraction_niche: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the non-adversarial users who share one niche taste: their personal "
        "scores follow a second, independent truth (one per criterion) instead of the global one",
    )
    score_max: int = Field(10, ge=1)
    first_week: dt.date = dt.date(2021, 1, 4)
    n_weeks: int = Field(208, ge=1)

    @model_validator(mode="after")
    def _check_sizes(self) -> SyntheticParams:
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError("criteria must be distinct")
        # Pair keys are packed as user·V² + lo·V + hi in an int64.
        if self.n_users * self.n_videos**2 >= 2**62:
            raise ValueError("n_users × n_videos² is too large for the pair keys")
        if self.n_comparisons_main < self.n_users:
            raise ValueError("need at least one comparison per user")
        if self.fraction_adversarial + self.fraction_niche > 1:
            raise ValueError("fraction_adversarial + fraction_niche must be at most 1")
        return self

    @property
    def n_comparisons_main(self) -> int:
        if self.n_comparisons is not None:
            return self.n_comparisons
        return max(1, round(self.comps_per_video * self.n_videos))


@dataclass
class SyntheticData:
    """Comparisons in the public-dataset format, with the latent scores that generated them."""

    params: SyntheticParams
    comparisons: pd.DataFrame  # COMPARISON_COLUMNS; string columns are categoricals
    truth_global: pd.DataFrame  # video, criteria, true_score (every video)
    truth_individual: pd.DataFrame  # public_username, video, criteria, true_score (compared ones)
    adversarial_users: list[str]
    target_videos: list[str]
    niche_users: list[str] = field(default_factory=list)
    truth_niche: pd.DataFrame | None = None  # video, criteria, true_score of the niche taste

    def meta(self) -> dict[str, object]:
        main_rows = self.comparisons[self.comparisons["criteria"] == self.params.criteria[0]]
        compared = pd.unique(np.concatenate([main_rows["video_a"], main_rows["video_b"]]))
        return {
            "generated_by": "ml.synthetic",
            "license": "synthetic",
            "generator": self.params.model_dump(mode="json"),
            "n_users": self.params.n_users,
            "n_videos_total": self.params.n_videos,
            "n_videos_compared": len(compared),
            "n_comparisons_main": len(main_rows),
            "n_rows": len(self.comparisons),
            "n_adversarial_users": len(self.adversarial_users),
            "target_videos": self.target_videos,
        }

    def write(self, directory: str | Path) -> Path:
        """Write comparisons.csv, truth_global.csv, truth_individual.csv, truth_users.csv and
        meta.json into ``directory`` (created if missing)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_frame(out / "comparisons.csv", self.comparisons)
        write_frame(out / "truth_global.csv", self.truth_global)
        write_frame(out / "truth_individual.csv", self.truth_individual)
        users = user_names(self.params.n_users)
        adversarial = set(self.adversarial_users)
        write_frame(
            out / "truth_users.csv",
            pd.DataFrame(
                {"public_username": users, "adversarial": [u in adversarial for u in users]}
            ),
        )
        (out / "meta.json").write_text(json.dumps(self.meta(), indent=2) + "\n")
        return out


def user_names(n: int) -> list[str]:
    return [f"user{i:05d}" for i in range(n)]


def video_names(n: int) -> list[str]:
    return [f"vid{i:08d}" for i in range(n)]


def sample_continuous_bt(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw r in [-1, 1] with density d·exp(r·d) / (2 sinh d), by inverse CDF.

    With d = sharpness·(θ_b − θ_a) a better video_b gives positive r, the ratings' sign
    convention. The CDF is F(r) = (e^{dr} − e^{−d}) / (e^{d} − e^{−d}); it is inverted in the
    form r = sign(d)·(1 + log(1 − v·(1 − e^{−2|d|})) / |d|) with v uniform on (0, 1], which stays
    accurate for small and large |d| (u and 1 − u have the same law, so the sign flip is exact).
    """
    d = np.asarray(d, dtype=np.float64)
    magnitude = np.abs(d)
    v = 1.0 - rng.random(d.shape)  # (0, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.log1p(v * np.expm1(-2.0 * magnitude)) / magnitude
        r = np.sign(d) * (1.0 + tail)
    # |d| → 0 is the uniform law on [-1, 1].
    flat = magnitude < 1e-8
    r[flat] = 1.0 - 2.0 * v[flat]
    return np.clip(r, -1.0, 1.0)


def generate(params: SyntheticParams) -> SyntheticData:
    """Draw users, videos, pairs, latent scores and ratings; fully determined by ``params.seed``."""
    rng = np.random.default_rng(params.seed)
    n_users, n_videos = params.n_users, params.n_videos

    popularity = rng.lognormal(0.0, params.pop_sigma, n_videos)
    popularity = popularity / popularity.sum()
    activity = rng.lognormal(0.0, params.act_sigma, n_users)

    n_adversarial = round(params.fraction_adversarial * n_users)
    is_adversarial = np.zeros(n_users, dtype=bool)
    is_adversarial[rng.choice(n_users, n_adversarial, replace=False)] = True
    targets = _pick_targets(params, rng) if params.adversarial_mode == "promote" else None

    wanted = _comparisons_per_user(params.n_comparisons_main, activity, n_videos, rng)
    users, video_a, video_b = _draw_unique_pairs(wanted, popularity, is_adversarial, targets, rng)
    week = rng.integers(0, params.n_weeks, len(users))
    order = np.argsort(users * params.n_weeks + week, kind="stable")
    users, video_a, video_b, week = users[order], video_a[order], video_b[order], week[order]

    # Each (user, video) seen gets one latent personal score per criterion.
    pair_keys = np.concatenate([users * n_videos + video_a, users * n_videos + video_b])
    user_video_keys, inverse = np.unique(pair_keys, return_inverse=True)
    index_a, index_b = inverse[: len(users)], inverse[len(users) :]
    uv_user, uv_video = user_video_keys // n_videos, user_video_keys % n_videos

    truth = _global_truth(params, rng)
    # Niche users and their taste come from a stream of their own, so the other draws (and every
    # set generated without niche users) stay as they were.
    is_niche, niche_truth = _niche(params, is_adversarial)
    user_scale = _user_scales(params)
    names_users = user_names(n_users)
    names_videos = video_names(n_videos)
    weeks = [
        (params.first_week + dt.timedelta(weeks=int(i))).isoformat() for i in range(params.n_weeks)
    ]
    comparison_frames, individual_frames, global_frames = [], [], []
    for c in range(len(params.criteria)):
        personal = truth[c][uv_video] + params.indiv_noise * rng.standard_normal(len(uv_video))
        niche_uv = is_niche[uv_user]
        personal[niche_uv] += niche_truth[c][uv_video[niche_uv]] - truth[c][uv_video[niche_uv]]
        adversarial_uv = is_adversarial[uv_user]
        if params.adversarial_mode == "reverse":
            personal[adversarial_uv] = -personal[adversarial_uv]
        else:
            assert targets is not None
            pushed = adversarial_uv & np.isin(uv_video, targets)
            personal[pushed] = truth[c].max() + 1.0
        rated = np.ones(len(users), dtype=bool) if c == 0 else _rated_mask(params, len(users), rng)
        d = (
            params.sharpness
            * user_scale[users[rated]]
            * (personal[index_b[rated]] - personal[index_a[rated]])
        )
        scores = np.rint(sample_continuous_bt(d, rng) * params.score_max).astype(np.int64)
        comparison_frames.append(
            pd.DataFrame(
                {
                    "public_username": _categorical(users[rated], names_users),
                    "video_a": _categorical(video_a[rated], names_videos),
                    "video_b": _categorical(video_b[rated], names_videos),
                    "criteria": _categorical(np.full(int(rated.sum()), c), params.criteria),
                    "score": scores,
                    "score_max": np.full(len(scores), params.score_max, dtype=np.int64),
                    "week_date": _categorical(week[rated], weeks),
                }
            )
        )
        seen = np.zeros(len(uv_user), dtype=bool)
        seen[index_a[rated]] = True
        seen[index_b[rated]] = True
        individual_frames.append(
            pd.DataFrame(
                {
                    "public_username": _categorical(uv_user[seen], names_users),
                    "video": _categorical(uv_video[seen], names_videos),
                    "criteria": _categorical(np.full(int(seen.sum()), c), params.criteria),
                    "true_score": personal[seen],
                }
            )
        )
        global_frames.append(
            pd.DataFrame(
                {
                    "video": _categorical(np.arange(n_videos), names_videos),
                    "criteria": _categorical(np.full(n_videos, c), params.criteria),
                    "true_score": truth[c],
                }
            )
        )

    return SyntheticData(
        params=params,
        comparisons=pd.concat(comparison_frames, ignore_index=True),
        truth_global=pd.concat(global_frames, ignore_index=True),
        truth_individual=pd.concat(individual_frames, ignore_index=True),
        adversarial_users=[names_users[i] for i in np.flatnonzero(is_adversarial)],
        target_videos=[] if targets is None else [names_videos[i] for i in targets],
        niche_users=[names_users[i] for i in np.flatnonzero(is_niche)],
        truth_niche=pd.DataFrame(
            {
                "video": np.repeat(np.asarray(names_videos), len(params.criteria)),
                "criteria": np.tile(np.asarray(params.criteria), n_videos),
                "true_score": np.stack(niche_truth, axis=1).ravel(),
            }
        )
        if is_niche.any()
        else None,
    )


def _niche(
    params: SyntheticParams, is_adversarial: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which users share the niche taste, and that taste per criterion (independent normals)."""
    is_niche = np.zeros(params.n_users, dtype=bool)
    n_niche = round(params.fraction_niche * params.n_users)
    if n_niche == 0:
        return is_niche, [np.zeros(params.n_videos) for _ in params.criteria]
    rng = np.random.default_rng([params.seed, 1])
    is_niche[rng.choice(np.flatnonzero(~is_adversarial), n_niche, replace=False)] = True
    return is_niche, [rng.standard_normal(params.n_videos) for _ in params.criteria]


def _user_scales(params: SyntheticParams) -> np.ndarray:
    """Each user's sharpness factor, from a stream of its own (other draws stay as they were)."""
    if params.scale_sigma == 0:
        return np.ones(params.n_users)
    rng = np.random.default_rng([params.seed, 2])
    return rng.lognormal(0.0, params.scale_sigma, params.n_users)


def split_heldout(
    comparisons: pd.DataFrame, fraction: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a random ``fraction`` of (user, pair) comparisons, all criteria together."""
    if not 0 <= fraction < 1:
        raise ValueError("fraction must be in [0, 1)")
    keys = pd.MultiIndex.from_frame(comparisons[["public_username", "video_a", "video_b"]])
    codes, uniques = pd.factorize(keys)
    held_pairs = np.random.default_rng(seed).random(len(uniques)) < fraction
    held = held_pairs[codes]
    return comparisons[~held].reset_index(drop=True), comparisons[held].reset_index(drop=True)


def _comparisons_per_user(
    total: int, activity: np.ndarray, n_videos: int, rng: np.random.Generator
) -> np.ndarray:
    # One comparison each, the rest by activity, capped at the number of distinct pairs.
    n_users = len(activity)
    wanted = 1 + rng.multinomial(total - n_users, activity / activity.sum())
    return np.minimum(wanted, n_videos * (n_videos - 1) // 2)


def _pick_targets(params: SyntheticParams, rng: np.random.Generator) -> np.ndarray:
    n_targets = min(params.n_targets, params.n_videos)
    return np.sort(rng.choice(params.n_videos, n_targets, replace=False))


def _draw_unique_pairs(
    wanted: np.ndarray,
    popularity: np.ndarray,
    is_adversarial: np.ndarray,
    targets: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw videos by popularity until every user has ``wanted`` distinct unordered pairs."""
    n_videos = len(popularity)
    accepted = np.empty(0, dtype=np.int64)  # sorted keys user·V² + lo·V + hi
    missing = wanted.astype(np.int64)
    draws_a, draws_b, draws_key = [], [], []
    for _ in range(MAX_DRAW_ROUNDS):
        if missing.sum() == 0:
            break
        users = np.repeat(np.arange(len(wanted), dtype=np.int64), missing)
        a = _sample_videos(popularity, len(users), rng)
        b = _sample_videos(popularity, len(users), rng)
        if targets is not None:
            # Coordinated push: half of each adversary's comparisons involve a target video.
            pushes = is_adversarial[users] & (rng.random(len(users)) < 0.5)
            a[pushes] = rng.choice(targets, int(pushes.sum()))
            swap = pushes & (rng.random(len(users)) < 0.5)
            a[swap], b[swap] = b[swap], a[swap]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = (users * n_videos + lo) * n_videos + hi
        valid = a != b
        _, first = np.unique(key, return_index=True)
        fresh = np.zeros(len(key), dtype=bool)
        fresh[first] = True
        valid &= fresh & ~_sorted_contains(accepted, key)
        # Keep at most the missing count per user (duplicates inside a round are rare).
        valid_users = users[valid]
        rank = _rank_within_groups(valid_users)
        keep_idx = np.flatnonzero(valid)[rank < missing[valid_users]]
        draws_a.append(a[keep_idx])
        draws_b.append(b[keep_idx])
        draws_key.append(key[keep_idx])
        accepted = np.sort(np.concatenate([accepted, key[keep_idx]]))
        missing -= np.bincount(users[keep_idx], minlength=len(wanted))
    keys = np.concatenate(draws_key)
    return (
        keys // (n_videos * n_videos),
        np.concatenate(draws_a),
        np.concatenate(draws_b),
    )


def _sample_videos(probabilities: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` i.i.d. draws: multinomial counts in a random order, much faster than a binary search
    per draw when ``n`` is in the millions."""
    counts = rng.multinomial(n, probabilities)
    return rng.permutation(np.repeat(np.arange(len(probabilities), dtype=np.int64), counts))


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """0-based position of each element among the equal values of ``groups`` (in array order)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_lengths = np.diff(np.r_[starts, len(groups)])
    ranks_sorted = np.arange(len(groups)) - np.repeat(starts, run_lengths)
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = ranks_sorted
    return ranks


def _global_truth(params: SyntheticParams, rng: np.random.Generator) -> list[np.ndarray]:
    main = rng.standard_normal(params.n_videos)
    truths = [main]
    rho = params.criteria_correlation
    for _ in params.criteria[1:]:
        own = rng.standard_normal(params.n_videos)
        truths.append(rho * main + np.sqrt(1.0 - rho**2) * own)
    return truths


def _rated_mask(params: SyntheticParams, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random(n) < params.p_extra_criteria


def _categorical(codes: np.ndarray, categories: list[str]) -> pd.Categorical[str]:
    return pd.Categorical.from_codes(
        np.asarray(codes, dtype=np.int64), categories=pd.Index(categories)
    )
