"""One order of a sweep's trials, the leaderboard's, for the leaderboard, progress.best and
promotion alike."""

from __future__ import annotations

import math

from sqlalchemy import select
from sqlmodel import Session

from app.models import Sweep, SweepEvaluation, SweepTrial
from app.sweeps import stats as sweep_stats
from ml.config import LicchaviConfig, config_hash
from ml.sweep.spec import SweepSpec

Trial = SweepTrial.__table__  # type: ignore[attr-defined]
Evaluation = SweepEvaluation.__table__  # type: ignore[attr-defined]

# The leaderboard's default: the best trial is the one whose 95% interval's pessimistic end is
# best, so a lucky mean over few seeds does not win.
CONFIDENCE = 0.95


def incumbent_id(session: Session, sweep: Sweep) -> int | None:
    """The trial run with the base settings (the defaults the sweep tries to beat)."""
    spec = SweepSpec.model_validate(sweep.spec)
    base = LicchaviConfig.model_validate(spec.base)
    return (
        session.connection()
        .execute(
            select(Trial.c.id)
            .where(Trial.c.sweep_id == sweep.id, Trial.c.config_hash == config_hash(base))
            .order_by(Trial.c.id)
            .limit(1)
        )
        .scalar()
    )


def unit_values(session: Session, sweep_id: int, metric: str) -> list[sweep_stats.UnitValue]:
    """The metric of every succeeded evaluation; values that are not finite numbers are left
    out, so one broken evaluation cannot break the ranking."""
    # Only the metric's value crosses the wire, not each evaluation's whole metrics document.
    rows = session.connection().execute(
        select(
            Evaluation.c.trial_id,
            Evaluation.c.unit_index,
            Evaluation.c.metrics[metric].as_float(),
        ).where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status == "succeeded")
    )
    values = []
    for trial_id, unit_index, value in rows:
        if isinstance(value, int | float) and math.isfinite(value):
            values.append(sweep_stats.UnitValue(int(trial_id), int(unit_index), float(value)))
    return values


def best_trial_id(session: Session, sweep: Sweep) -> int | None:
    """The succeeded trial ranked highest by the leaderboard (its objective, default
    confidence); None before any trial has succeeded."""
    assert sweep.id is not None
    rows = sweep_stats.leaderboard(
        unit_values(session, sweep.id, sweep.objective_metric),
        direction=sweep.direction,  # type: ignore[arg-type]
        incumbent_id=None,
        confidence=CONFIDENCE,
    )
    succeeded = set(
        session.connection()
        .execute(
            select(Trial.c.id).where(
                Trial.c.sweep_id == sweep.id,
                Trial.c.status == "succeeded",
                Trial.c.objective.is_not(None),
            )
        )
        .scalars()
    )
    return next((row.trial_id for row in rows if row.trial_id in succeeded), None)
