"""Promotion: a sweep's best configuration becomes the default of production training runs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from app.core.errors import Conflict, NotFound
from app.models import SweepTrial, TrainingDefaults
from app.runs.training_defaults import active_defaults
from app.sweeps.control import get_sweep
from app.sweeps.execution import now_utc, record_event
from app.sweeps.ranking import best_trial_id
from ml.config import LicchaviConfig, config_hash

__all__ = ["active_defaults", "history", "promote", "public", "revert"]


def promote(
    session: Session, sweep_id: int, *, trial_id: int | None, note: str | None
) -> TrainingDefaults:
    """Promote `trial_id`, or the sweep's best succeeded trial as the leaderboard ranks it."""
    sweep = get_sweep(session, sweep_id)
    if trial_id is None:
        best = best_trial_id(session, sweep)
        if best is None:
            raise Conflict(f"Sweep {sweep_id} has no succeeded trial to promote yet.")
        trial = session.get(SweepTrial, best)
        assert trial is not None
    else:
        trial = session.get(SweepTrial, trial_id)
        if trial is None or trial.sweep_id != sweep_id:
            raise NotFound(f"Trial {trial_id} is not in sweep {sweep_id}.")
        if trial.status != "succeeded":
            raise Conflict(f"Trial {trial_id} is {trial.status}; only a succeeded trial.")
    config = LicchaviConfig.model_validate({**trial.config, "device": "auto"})
    row = TrainingDefaults(
        config=config.model_dump(mode="json"),
        config_hash=config_hash(config),
        sweep_id=sweep_id,
        trial_id=trial.id,
        note=note,
    )
    session.add(row)
    session.flush()
    record_event(
        session.connection(),
        sweep_id=sweep_id,
        trial_id=trial.id,
        status="promoted",
        detail=f"training defaults {row.id}",
    )
    return row


def revert(session: Session, defaults_id: int) -> TrainingDefaults:
    row = session.get(TrainingDefaults, defaults_id)
    if row is None:
        raise NotFound(f"Training defaults {defaults_id} do not exist.")
    if row.reverted_at is not None:
        raise Conflict(f"Training defaults {defaults_id} were already reverted.")
    row.reverted_at = now_utc()
    session.add(row)
    session.flush()
    return row


def history(session: Session, *, limit: int, offset: int) -> tuple[list[TrainingDefaults], int]:
    rows = list(
        session.exec(
            select(TrainingDefaults).order_by(col(TrainingDefaults.id).desc())  # type: ignore[call-overload]
        ).scalars()
    )
    return rows[offset : offset + limit], len(rows)


def public(row: TrainingDefaults, active_id: int | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "config": row.config,
        "config_hash": row.config_hash,
        "sweep_id": row.sweep_id,
        "trial_id": row.trial_id,
        "note": row.note,
        "created_at": row.created_at,
        "reverted_at": row.reverted_at,
        "active": row.id == active_id,
    }
