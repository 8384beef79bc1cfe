"""Drive a sweep to its end in this process with the real scheduler and evaluation runner."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.core.config import Settings
from app.models import Sweep, SweepEvaluation
from app.sweeps import execution
from app.sweeps.scheduler import SweepScheduler
from workers.sweep_evaluation import EvaluationRunner

FINAL = ("completed", "cancelled", "failed")
OWNER = "inline-worker"

# Small enough that one evaluation trains in well under half a second.
GRID_SPEC: dict[str, Any] = {
    "name": "inline grid",
    "method": "grid",
    "parameters": {"w": {"values": [0.5, 1.0, 2.0]}, "w0": {"values": [0.5, 1.0]}},
    "repeats": {"seeds": [0, 1, 2]},
    "evaluation": {
        "kind": "synthetic",
        "generator": {"n_users": 20, "n_videos": 60, "comps_per_video": 3},
    },
    "objectives": [{"metric": "spearman", "direction": "maximize"}],
    "base": {"epochs": 20, "compute_uncertainty": False},
}


def grid_spec(**overrides: Any) -> dict[str, Any]:
    """The 3×2 synthetic grid over w and w0 (3 seeds), with top-level keys replaced."""
    return {**copy.deepcopy(GRID_SPEC), **copy.deepcopy(overrides)}


def _counts(engine: Engine, sweep_id: int) -> tuple[str, dict[str, int]]:
    evaluations = SweepEvaluation.__table__  # type: ignore[attr-defined]
    sweeps = Sweep.__table__  # type: ignore[attr-defined]
    with engine.connect() as connection:
        status = connection.execute(
            select(sweeps.c.status).where(sweeps.c.id == sweep_id)
        ).scalar_one()
        counts = connection.execute(
            select(evaluations.c.status, func.count())
            .where(evaluations.c.sweep_id == sweep_id)
            .group_by(evaluations.c.status)
        ).all()
    return str(status), {str(name): int(count) for name, count in counts}


def run_sweep_inline(
    engine: Engine, settings: Settings, sweep_id: int, *, max_passes: int = 200
) -> str:
    """Alternate scheduler ticks with running every queued evaluation until the sweep ends.

    A cancelled sweep counts as ended once the scheduler has wound it down (finished_at set).
    Returns the sweep's final status.
    """
    scheduler = SweepScheduler(engine, settings, owner="inline-scheduler", wake=lambda _id: None)
    runner = EvaluationRunner(engine, settings)
    sweeps = Sweep.__table__  # type: ignore[attr-defined]
    for _ in range(max_passes):
        assert scheduler.tick(), "another scheduler holds the sweep lease"
        while (
            claim := execution.claim_next(
                engine, owner=OWNER, lease_seconds=settings.sweep_lease_seconds
            )
        ) is not None:
            runner.run(claim)
        with engine.connect() as connection:
            status, finished_at = connection.execute(
                select(sweeps.c.status, sweeps.c.finished_at).where(sweeps.c.id == sweep_id)
            ).one()
        if status in FINAL and finished_at is not None:
            return str(status)
    status, counts = _counts(engine, sweep_id)
    raise AssertionError(
        f"sweep {sweep_id} still {status} after {max_passes} passes; evaluations: {counts}"
    )
