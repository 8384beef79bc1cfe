"""Does a TPE search over the learning rates and w, w0 beat Licchavi's defaults? A sweep on
synthetic data with ground truth, run in this process on the embedded default (SQLite), with
the service's own scheduler and evaluation runner; prints the leaderboard's verdict.

    .venv/bin/python bench/tpe_vs_defaults.py [--trials 40] [--seeds 5] [--metric spearman]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--metric", default="spearman")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--comps-per-video", type=float, default=10.0)
    parser.add_argument("--solver", default="faithful")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="licchavi-tpe-"))
    os.environ["DATA_DIR"] = str(data_dir)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)

    from sqlmodel import Session

    from app.cli.main import migrate
    from app.core.config import get_settings
    from app.core.db import get_engine
    from app.sweeps import control, execution, results
    from app.sweeps.scheduler import SweepScheduler
    from workers.sweep_evaluation import EvaluationRunner

    migrate()
    settings = get_settings()
    engine = get_engine()
    spec = {
        "name": "tpe vs defaults",
        "method": "tpe",
        "base": {"solver": args.solver},
        "parameters": {
            "lr_node": {"low": 0.05, "high": 5.0, "log": True},
            "lr_gen": {"low": 0.005, "high": 1.0, "log": True},
            "w": {"low": 0.05, "high": 20.0, "log": True},
            "w0": {"low": 0.05, "high": 20.0, "log": True},
        },
        "repeats": {"seeds": list(range(args.seeds))},
        "evaluation": {
            "kind": "synthetic",
            "generator": {
                "n_users": args.users,
                "n_videos": args.videos,
                "comps_per_video": args.comps_per_video,
            },
            "heldout_fraction": 0.1,
        },
        "objectives": [{"metric": args.metric, "direction": "maximize"}],
        "budget": {"max_trials": args.trials, "max_parallel": 2},
        "sampler_seed": 0,
    }
    with Session(engine) as session:
        sweep = control.submit(session, control.validate_spec(spec))
        session.commit()
        sweep_id = sweep.id
    assert sweep_id is not None
    scheduler = SweepScheduler(engine, settings, owner="bench", wake=lambda _id: None)
    runner = EvaluationRunner(engine, settings)
    started = time.perf_counter()
    while True:
        scheduler.tick()
        while (claim := execution.claim_next(engine, owner="bench", lease_seconds=600)) is not None:
            runner.run(claim)
        with Session(engine) as session:
            if control.get_sweep(session, sweep_id).status != "running":
                break
    elapsed = time.perf_counter() - started
    with Session(engine) as session:
        board = results.leaderboard(
            session,
            sweep_id,
            metric=None,
            direction=None,
            confidence=0.95,
            limit=5,
            offset=0,
        )
        incumbent = next(
            row
            for row in results.leaderboard(
                session,
                sweep_id,
                metric=None,
                direction=None,
                confidence=0.95,
                limit=10_000,
                offset=0,
            )["items"]
            if row["trial_id"] == board["incumbent_id"]
        )
    print(f"{args.trials} TPE trials + the defaults × {args.seeds} seeds in {elapsed:.0f} s")
    print(
        f"defaults: {args.metric} {incumbent['mean']:.4f}"
        f" [{incumbent['ci_low']:.4f}, {incumbent['ci_high']:.4f}], rank {incumbent['rank']}"
    )
    for row in board["items"]:
        paired = row["vs_incumbent"]
        versus = (
            "incumbent"
            if paired is None
            else f"Δ {paired['mean_difference']:+.4f} [{paired['ci_low']:+.4f},"
            f" {paired['ci_high']:+.4f}] p={paired['p_value']:.3g}"
            f"{' better' if paired['better'] else ''}"
        )
        params = {k: round(v, 3) for k, v in row["params"].items()}
        line = f"#{row['rank']} trial {row['trial_id']}: {row['mean']:.4f} {versus}"
        print(f"{line} {json.dumps(params)}")


if __name__ == "__main__":
    main()
