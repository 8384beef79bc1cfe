"""Score quality against a known truth: generated sets of the shapes of issue 14, every solver.

Sets (sizes scale with --comparisons, 30k by default): `typical` (sparse), `inverted` (10 % of
users with inverted taste), `niche` (10 % sharing an independent taste), `dense` (many users,
few videos), `attacked` (the typical set plus 20 fake accounts × 100 comparisons promoting a
video with 5 honest contributors) and `scales` (the typical set with users who differ in how
extreme their ratings are: each user's sharpness lognormal, sigma 0.7). Each run trains the main
criterion twice, on the rows as generated and shuffled, and reports a markdown table
(docs/solvers.md, "Quality against a known truth"). Usage:

    python bench/quality.py [--comparisons 30000] [--sets typical,dense]
        [--run faithful:solver=faithful --run converged-w0.2:solver=converged,w=0.2]

The default runs are v1's solver (`faithful`), the converged solver with its own local scores
(`converged`, personalise=false), personal scores tied to the global scores alone
(`one-taste`, personal_tastes=false) and the library default (`default`: converged + personal
scores, with a second shared taste).
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

from ml.config import LicchaviConfig, load_config  # noqa: E402
from ml.data import ComparisonDataset  # noqa: E402
from ml.licchavi.trainer import CriterionResult, NotConverged, train_criterion  # noqa: E402
from ml.metrics import mean_user_spearman, spearman  # noqa: E402
from ml.resample import resample_contributors  # noqa: E402
from ml.sybil import sybil_attack  # noqa: E402
from ml.synthetic import MAIN_CRITERION, SyntheticParams, generate  # noqa: E402

SETS = ("typical", "inverted", "niche", "dense", "attacked", "scales")
DEFAULT_RUNS = (
    "faithful:solver=faithful",
    "converged:solver=converged,personalise=false",
    "one-taste:personal_tastes=false",
    "default:",
)
BUCKETS = ((1, 5, "≤5"), (6, 20, "6–20"), (21, 10**9, ">20"))
Z95 = 1.96


@dataclass(frozen=True)
class Truth:
    """One generated set: its comparisons and what generated them."""

    name: str
    comparisons: pd.DataFrame
    global_truth: pd.Series  # true score by video
    individual: pd.DataFrame  # public_username, video, true_score (the user's own taste)
    deviating: list[str]  # users whose taste is not the global one (inverted or niche)
    excluded: list[str]  # users left out of the ordinary users (deviating and fake)
    target: str | None  # the attacked video


def build_set(name: str, comparisons: int, seed: int, n_videos: int | None = None) -> Truth:
    """The set ``name`` at ``comparisons`` comparisons (shapes documented in the module); a
    sparse shape with ``n_videos`` videos instead of 9 per 100 comparisons, if given."""
    sparse: dict[str, object] = {
        "n_users": max(10, comparisons // 100),
        "n_videos": n_videos or max(20, comparisons * 9 // 100),
    }
    shapes: dict[str, dict[str, object]] = {
        "typical": sparse,
        "attacked": sparse,
        "inverted": {**sparse, "fraction_adversarial": 0.1, "adversarial_mode": "reverse"},
        "niche": {**sparse, "fraction_niche": 0.1},
        # Users differ in how extreme their ratings are (a rater's sharpness, lognormal).
        "scales": {**sparse, "scale_sigma": 0.7},
        "dense": {"n_users": max(10, comparisons // 30), "n_videos": max(20, comparisons // 300)},
    }
    params = SyntheticParams.model_validate(
        {"n_comparisons": comparisons, "seed": seed, **shapes[name]}
    )
    data = generate(params)
    truth = data.truth_global.assign(video=data.truth_global["video"].astype(str))
    individual = data.truth_individual.astype({"public_username": str, "video": str})
    frame, target, fake = data.comparisons, None, []
    if name == "attacked":
        attack = sybil_attack(data, seed=seed)
        frame, target, fake = attack.comparisons, attack.target, attack.fake_users
    deviating = data.niche_users if name == "niche" else data.adversarial_users
    return Truth(
        name=name,
        comparisons=frame,
        global_truth=truth.set_index("video")["true_score"],
        individual=individual[["public_username", "video", "true_score"]],
        deviating=list(deviating),
        excluded=list(deviating) + fake,
        target=target,
    )


def train_frame(frame: pd.DataFrame, config: LicchaviConfig) -> tuple[CriterionResult, float]:
    data = ComparisonDataset.from_frame(frame).criteria[MAIN_CRITERION]
    started = time.perf_counter()
    result = train_criterion(data, config)
    return result, time.perf_counter() - started


def _global(result: CriterionResult) -> pd.Series:
    return pd.Series(result.global_scores, index=result.video_ids.astype(str))


def global_spearman(result: CriterionResult, truth: Truth) -> float:
    """Spearman of the global scores with the true ones, over the compared videos."""
    scores = _global(result)
    return spearman(scores.to_numpy(), truth.global_truth.reindex(scores.index).to_numpy())


def target_rank(result: CriterionResult, truth: Truth) -> int | None:
    """The attacked video's global rank (1: first); None for a set without one."""
    if truth.target is None:
        return None
    scores = _global(result)
    return int((scores > scores[truth.target]).sum()) + 1


def _local(result: CriterionResult) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "public_username": result.user_ids[result.local_user_index].astype(str),
            "video": result.video_ids[result.local_video_index].astype(str),
            "score": result.local_scores,
            "uncertainty": result.local_uncertainty,
            "tied": result.local_scores == result.global_scores[result.local_video_index],
        }
    )


def coverage(
    result: CriterionResult, truth: pd.Series, spread: np.ndarray | None = None, name: str = ""
) -> dict[str, float]:
    """95 % interval coverage by contributor bucket and Spearman(uncertainty, |error|).

    Scores are on their own scale: the truth is first mapped onto it by the least-squares line
    score ≈ a·truth + b, and the error is score − (a·truth + b). ``spread`` defaults to the
    served global uncertainty; videos with no finite spread are left out.
    """
    scores = result.global_scores
    true = truth.reindex(result.video_ids.astype(str)).to_numpy()
    slope, intercept = np.polyfit(true, scores, 1)
    error = np.abs(scores - (slope * true + intercept))
    spread = result.global_uncertainty if spread is None else spread
    known = np.isfinite(spread)
    prefix = f"{name} " if name else ""
    out = {f"{prefix}unc_spearman": spearman(spread[known], error[known])}
    for low, high, label in BUCKETS:
        inside = known & (result.n_contributors >= low) & (result.n_contributors <= high)
        covered = error[inside] <= Z95 * spread[inside]
        out[f"{prefix}cov {label}"] = float(covered.mean()) if inside.any() else float("nan")
    return out


def local_coverage(result: CriterionResult, truth: Truth, local: pd.DataFrame) -> float:
    """Share of the honest users' local scores whose own true score, mapped onto the score scale
    by the global fit's line (score ≈ a·truth + b), lies within ±1.96·local uncertainty."""
    true = truth.global_truth.reindex(result.video_ids.astype(str)).to_numpy()
    slope, intercept = np.polyfit(true, result.global_scores, 1)
    honest = local[~local["public_username"].isin(set(truth.excluded) - set(truth.deviating))]
    error = np.abs(honest["score"] - (slope * honest["true_score"] + intercept))
    return float((error <= Z95 * honest["uncertainty"]).mean())


def curvature_spread(result: CriterionResult) -> np.ndarray:
    """1 / sqrt(2·w0 + Σ over raters of the fit's curvature along θ_nv): a Laplace-style
    spread that lets every rater's curvature reach ρ_v (as if θ_nv moved with ρ_v)."""
    curvature = np.bincount(
        result.local_video_index,
        weights=result.local_uncertainty**-2.0,
        minlength=len(result.video_ids),
    )
    return np.asarray((2 * result.config.w0 + curvature) ** -0.5)


def bootstrap_spread(
    frame: pd.DataFrame, config: LicchaviConfig, video_ids: np.ndarray, repeats: int, seed: int
) -> tuple[np.ndarray, int]:
    """Standard deviation of each video's global score over trainings on contributor resamples
    (NaN for a video in fewer than two of them), and how many resamples trained."""
    rng = np.random.default_rng(seed)
    quiet = config.model_copy(update={"compute_uncertainty": False})
    columns = []
    for _ in range(repeats):
        try:
            result, _ = train_frame(resample_contributors(frame, rng), quiet)
        except NotConverged:
            continue
        columns.append(_global(result).reindex(video_ids.astype(str)).to_numpy())
    if not columns:
        return np.full(len(video_ids), np.nan), 0
    table = np.column_stack(columns)
    present = np.isfinite(table).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.nanstd(table, axis=1, ddof=1)
    return np.where(present >= 2, spread, np.nan), len(columns)


def measure(
    truth: Truth, config: LicchaviConfig, seed: int, bootstrap: int = 0
) -> dict[str, object]:
    """Every figure of one (set, settings) cell."""
    result, seconds = train_frame(truth.comparisons, config)
    shuffled = truth.comparisons.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    again, _ = train_frame(shuffled, config)
    scores = _global(result)
    local = _local(result).merge(truth.individual, on=["public_username", "video"])
    ordinary = ~local["public_username"].isin(truth.excluded)
    deviating = local["public_username"].isin(truth.deviating)

    def users_mean(rows: pd.Series) -> float:
        part = local[rows]
        value, _ = mean_user_spearman(
            part["public_username"].to_numpy(),
            part["score"].to_numpy(),
            part["true_score"].to_numpy(),
        )
        return value

    figures: dict[str, object] = {
        "spearman": global_spearman(result, truth),
        "ordinary users": users_mean(ordinary),
        "deviating users": users_mean(deviating) if truth.deviating else float("nan"),
        "local = global": float(local["tied"].mean()),
        **coverage(result, truth.global_truth),
        "local cov": local_coverage(result, truth, local),
        "target rank": target_rank(result, truth),
        "iterations": result.epochs,
        "converged": result.converged,
        "stationarity": result.stationarity,
        "seconds": seconds,
        "max |Δρ| shuffled": float(np.abs(scores - _global(again).reindex(scores.index)).max()),
    }
    if bootstrap:
        figures.update(coverage(result, truth.global_truth, curvature_spread(result), "curv"))
        spread, trained = bootstrap_spread(
            truth.comparisons, config, result.video_ids, bootstrap, seed
        )
        figures.update(coverage(result, truth.global_truth, spread, f"boot{trained}"))
    return figures


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if np.isnan(value):
            return "–"
        if value != 0 and abs(value) < 0.001:
            return f"{value:.1e}"
        return f"{value:.3g}" if abs(value) >= 10 or value == 0 else f"{value:.3f}"
    return str(value)


def table(rows: list[dict[str, object]]) -> str:
    columns = list(rows[0])
    header = [column.replace("|", "\\|") for column in columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def parse_run(text: str) -> tuple[str, LicchaviConfig]:
    """NAME:key=value,key=value -> (NAME, config)."""
    name, _, settings = text.partition(":")
    overrides = [item for item in settings.split(",") if item]
    return name, load_config(None, overrides).model_copy(update={"device": "cpu"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=30_000)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--run", action="append", help="NAME:key=value,... (repeatable)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="also measure two candidate uncertainties: the fit's curvature and the spread over "
        "this many contributor resamples",
    )
    args = parser.parse_args(argv)
    runs = [parse_run(text) for text in (args.run or DEFAULT_RUNS)]
    rows = []
    for name in args.sets.split(","):
        if name not in SETS:
            parser.error(f"unknown set {name!r}; choose from {', '.join(SETS)}")
        truth = build_set(name, args.comparisons, args.seed)
        for run_name, config in runs:
            try:
                figures = measure(truth, config, args.seed, args.bootstrap)
            except RuntimeError as error:  # a solver that refuses to publish says why
                figures = {"error": str(error)}
            rows.append({"set": name, "run": run_name, **figures})
            print(f"{name} {run_name}: {figures}", file=sys.stderr, flush=True)
    complete = [row for row in rows if "error" not in row]
    if complete:
        print(table(complete))
    for row in rows:
        if "error" in row:
            print(f"\n{row['set']} / {row['run']}: {row['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
