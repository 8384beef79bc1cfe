"""Sweeps from a user's side: submit (or dry-run) a spec, pause, resume, cancel, extend the
budget, retry failed trials, re-run a trial with overrides."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import String, func, select, update
from sqlmodel import Session, col

from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.logs import current_request_id
from app.core.version import code_version, git_commit
from app.models import Comparison, Criterion, Sweep, SweepEvaluation, SweepTrial
from app.runs.service import production_config, resolved_config
from app.runs.wakeups import require_gpu_worker
from app.sweeps.execution import now_utc, record_event
from app.sweeps.ranking import best_trial_id
from app.sweeps.scheduler import add_evaluations
from ml.config import LicchaviConfig, config_hash
from ml.sweep.spec import HoldoutEvaluation, SweepSpec, error_location, on_defaults, spec_hash

Evaluation = SweepEvaluation.__table__  # type: ignore[attr-defined]
Trial = SweepTrial.__table__  # type: ignore[attr-defined]
SweepTable = Sweep.__table__  # type: ignore[attr-defined]
DRY_RUN_LISTED_TRIALS = 1_000


def production_settings(session: Session) -> dict[str, Any]:
    """The settings a sweep's `base` is laid over: production's (the promoted training
    defaults, else the library's), as a run's are."""
    return (production_config(session) or LicchaviConfig()).model_dump(mode="json")


def validate_spec(
    content: Any, *, pointer: str = "", defaults: dict[str, Any] | None = None
) -> SweepSpec:
    """The spec (its `base` over `defaults`) with every default resolved; InvalidInput names
    each bad field."""
    try:
        return SweepSpec.model_validate(on_defaults(content, defaults))
    except ValidationError as exc:
        errors: list[dict[str, Any]] = []
        for details in exc.errors():
            path, message = error_location(details)
            errors.append(
                {
                    "loc": path,
                    "pointer": pointer + "/" + "/".join(path),
                    "message": message,
                    "type": details["type"],
                }
            )
        first = errors[0]
        raise InvalidInput(f"{first['pointer']}: {first['message']}", errors=errors) from exc


def dry_run(session: Session, spec: SweepSpec) -> dict[str, Any]:
    """What a submission would run: the trials (a grid's first DRY_RUN_LISTED_TRIALS are
    listed) and the evaluation count; refused as the submission would be."""
    check_submittable(session, spec)
    units = spec.units()
    max_trials = spec.budget.max_trials or 0
    baseline = spec.needs_baseline(max_trials)
    if spec.method == "grid":
        # Counted in full, listed up to a page: a 100,000-point grid is not built to answer.
        n_trials = min(max_trials, spec.grid_size())
        trials: list[dict[str, Any]] | None = []
        for params in spec.grid(limit=min(n_trials, DRY_RUN_LISTED_TRIALS)):
            config = LicchaviConfig.model_validate({**spec.base, **params})
            assert trials is not None
            trials.append({"params": params, "config_hash": config_hash(config)})
    else:
        trials = None  # a sampler chooses them as results come in
        n_trials = max_trials
    n_trials += int(baseline)
    return {
        "spec": spec.resolved(),
        "spec_hash": spec_hash(spec),
        "method": spec.method,
        "n_trials": n_trials,
        "includes_baseline": baseline,
        "units_per_trial": len(units),
        "units": [{"unit_index": i, "seed": s, "fold": f} for i, (s, f) in enumerate(units)],
        "n_evaluations": n_trials * len(units),
        "trials": trials,
        "search_space": {
            name: p.model_dump(exclude_none=True) for name, p in spec.parameters.items()
        },
    }


def check_submittable(session: Session, spec: SweepSpec) -> None:
    """Refuse what the spec alone cannot tell: a criterion without the comparisons a holdout
    evaluation splits into folds, or CUDA while no worker reads the `gpu` queue."""
    if isinstance(spec.evaluation, HoldoutEvaluation):
        known = (
            session.connection()
            .execute(select(col(Criterion.id)).where(col(Criterion.name) == spec.criterion))
            .scalar()
        )
        if known is None:
            _refuse_criterion(f"unknown criterion {spec.criterion!r}", "unknown_criterion")
        folds = spec.evaluation.folds
        # Counted up to what is needed: a criterion with millions of comparisons stops early.
        enough = (
            select(col(Comparison.id)).where(col(Comparison.criterion_id) == known).limit(folds)
        )
        found = session.connection().execute(select(func.count()).select_from(enough.subquery()))
        if (count := int(found.scalar_one())) < folds:
            _refuse_criterion(
                f"criterion {spec.criterion!r} has "
                + ("no comparisons" if count == 0 else f"{count} comparisons, too few")
                + f" for {folds} folds",
                "too_few_comparisons",
            )
    if spec.base.get("device") == "cuda":
        require_gpu_worker("This sweep's base settings")


def _refuse_criterion(message: str, kind: str) -> None:
    raise InvalidInput(
        f"/criterion: {message}",
        errors=[
            {
                "loc": ["body", "criterion"],
                "pointer": "/criterion",
                "message": message,
                "type": kind,
            }
        ],
    )


def submit(session: Session, spec: SweepSpec, caller: str | None = None) -> Sweep:
    """Store a sweep in `preparing`; the scheduler freezes its data and starts it. `caller`:
    the credential that submitted it through the API (None from the command line)."""
    check_submittable(session, spec)
    objective = spec.objectives[0]
    assert spec.budget.max_trials is not None
    sweep = Sweep(
        name=spec.name,
        method=spec.method,
        spec=spec.resolved(),
        spec_hash=spec_hash(spec),
        tags=list(spec.tags),
        criterion=spec.criterion,
        objective_metric=objective.metric,
        direction=objective.direction,
        max_trials=spec.budget.max_trials,
        max_parallel=spec.budget.max_parallel,
        wall_clock_seconds=spec.budget.wall_clock_seconds,
        units_per_trial=spec.units_per_trial,
        code_version=code_version(),
        git_commit=git_commit(),
        request_id=current_request_id(),
        caller=caller,
    )
    session.add(sweep)
    session.flush()
    assert sweep.id is not None
    record_event(session.connection(), sweep_id=sweep.id, status="preparing", detail="submitted")
    return sweep


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"Sweep {sweep_id} does not exist.")
    return sweep


def list_sweeps(
    session: Session, *, status: str | None, tag: str | None, limit: int, offset: int
) -> tuple[list[Sweep], int]:
    """Sweeps newest first, by status and tag; the filtering and paging run in the database."""
    conditions = []
    if status is not None:
        conditions.append(SweepTable.c.status == status)
    if tag is not None:
        # tags are a JSON list of plain words (no comma, validated): match the quoted element.
        escaped = tag.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.cast(SweepTable.c.tags, String).like(f'%"{escaped}"%', escape="\\"))
    connection = session.connection()
    total = connection.execute(
        select(func.count()).select_from(SweepTable).where(*conditions)
    ).scalar_one()
    ids = list(
        connection.execute(
            select(SweepTable.c.id)
            .where(*conditions)
            .order_by(SweepTable.c.id.desc())
            .limit(limit)
            .offset(offset)
        ).scalars()
    )
    sweeps = (
        {
            sweep.id: sweep
            for sweep in session.exec(
                select(Sweep).where(col(Sweep.id).in_(ids))  # type: ignore[call-overload]
            ).scalars()
        }
        if ids
        else {}
    )
    return [sweeps[sweep_id] for sweep_id in ids], int(total)


def progress(session: Session, sweep_id: int) -> dict[str, Any]:
    """Counts of trials and evaluations by status, and the best trial so far."""
    connection = session.connection()
    trials: dict[str, int] = dict(
        connection.execute(
            select(Trial.c.status, func.count())
            .where(Trial.c.sweep_id == sweep_id)
            .group_by(Trial.c.status)
        ).all()
    )
    evaluations: dict[str, int] = dict(
        connection.execute(
            select(Evaluation.c.status, func.count())
            .where(Evaluation.c.sweep_id == sweep_id)
            .group_by(Evaluation.c.status)
        ).all()
    )
    # The leaderboard's first succeeded trial, not the highest mean: both must name the same.
    best_id = best_trial_id(session, get_sweep(session, sweep_id))
    best = (
        None
        if best_id is None
        else connection.execute(
            select(Trial.c.id, Trial.c.number, Trial.c.params, Trial.c.objective).where(
                Trial.c.id == best_id
            )
        ).one()
    )
    return {
        "trials": {str(k): int(v) for k, v in trials.items()},
        "evaluations": {str(k): int(v) for k, v in evaluations.items()},
        "best": None
        if best is None
        else {
            "trial_id": best.id,
            "number": best.number,
            "params": best.params,
            "objective": best.objective,
        },
    }


def _transition(session: Session, sweep: Sweep, allowed: tuple[str, ...], target: str) -> Sweep:
    if sweep.status not in allowed:
        raise Conflict(f"Sweep {sweep.id} is {sweep.status}; cannot move it to {target}.")
    assert sweep.id is not None
    moved = (
        session.connection()
        .execute(
            update(SweepTable)
            .where(SweepTable.c.id == sweep.id, SweepTable.c.status.in_(allowed))
            .values(status=target, **({"finished_at": None} if target == "running" else {}))
        )
        .rowcount
    )
    if not moved:
        raise Conflict(f"Sweep {sweep.id} changed meanwhile; read it again.")
    record_event(session.connection(), sweep_id=sweep.id, status=target)
    session.refresh(sweep)
    return sweep


def pause(session: Session, sweep_id: int) -> Sweep:
    """No evaluation starts while paused; running ones finish and are recorded."""
    return _transition(session, get_sweep(session, sweep_id), ("running", "preparing"), "paused")


def resume(session: Session, sweep_id: int) -> Sweep:
    sweep = get_sweep(session, sweep_id)
    target = "running" if sweep.started_at is not None else "preparing"
    return _transition(session, sweep, ("paused",), target)


def cancel(session: Session, sweep_id: int) -> Sweep:
    """Unstarted evaluations are cancelled now; running ones stop at their next heartbeat."""
    sweep = get_sweep(session, sweep_id)
    sweep = _transition(session, sweep, ("preparing", "running", "paused"), "cancelled")
    connection = session.connection()
    now = now_utc()
    connection.execute(
        update(Evaluation)
        .where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status.in_(("pending", "queued")))
        .values(status="cancelled", finished_at=now, error="sweep cancelled")
    )
    connection.execute(
        update(Evaluation)
        .where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status == "running")
        .values(cancel_requested=True)
    )
    return sweep


def update_budget(
    session: Session,
    sweep_id: int,
    *,
    max_trials: int | None,
    max_parallel: int | None,
    wall_clock_seconds: float | None,
) -> Sweep:
    """Extend (or shrink) the budget; a completed sweep with room left runs again."""
    sweep = get_sweep(session, sweep_id)
    if sweep.status in ("cancelled", "failed"):
        raise Conflict(f"Sweep {sweep_id} is {sweep.status}.")
    if sweep.method == "grid" and max_trials is not None:
        grid_size = SweepSpec.model_validate(sweep.spec).grid_size()
        if max_trials > grid_size:
            raise InvalidInput(
                f"/max_trials: the grid has {grid_size} points",
                errors=[
                    {
                        "loc": ["body", "max_trials"],
                        "pointer": "/max_trials",
                        "message": f"the grid has {grid_size} points",
                        "type": "less_than_equal",
                    }
                ],
            )
    changes: dict[str, Any] = {}
    if max_trials is not None:
        changes["max_trials"] = max_trials
    if max_parallel is not None:
        changes["max_parallel"] = max_parallel
    if wall_clock_seconds is not None:
        changes["wall_clock_seconds"] = wall_clock_seconds
    for name, value in changes.items():
        setattr(sweep, name, value)
    if sweep.status == "completed":
        sweep.status = "running"
        sweep.finished_at = None
    session.add(sweep)
    session.flush()
    record_event(
        session.connection(),
        sweep_id=sweep_id,
        status=sweep.status,
        detail="budget " + ", ".join(f"{k}={v}" for k, v in changes.items()),
    )
    return sweep


def _reopen(session: Session, sweep: Sweep) -> None:
    if sweep.status == "completed":
        sweep.status = "running"
        sweep.finished_at = None
        session.add(sweep)
    elif sweep.status in ("cancelled", "failed"):
        raise Conflict(f"Sweep {sweep.id} is {sweep.status}.")


def retry_failed(session: Session, sweep_id: int) -> int:
    """Failed evaluations (and their trials) run again; returns how many evaluations."""
    sweep = get_sweep(session, sweep_id)
    connection = session.connection()
    trial_ids = list(
        connection.execute(
            select(Trial.c.id).where(Trial.c.sweep_id == sweep_id, Trial.c.status == "failed")
        ).scalars()
    )
    if not trial_ids:
        return 0
    _reopen(session, sweep)
    retried = connection.execute(
        update(Evaluation)
        .where(
            Evaluation.c.trial_id.in_(trial_ids),
            Evaluation.c.status.in_(("failed", "cancelled")),
        )
        .values(status="pending", attempt=0, error=None, cancel_requested=False, finished_at=None)
    ).rowcount
    connection.execute(
        update(Trial)
        .where(Trial.c.id.in_(trial_ids), Trial.c.config_hash != "")
        .values(status="pending", finished_at=None)
    )
    record_event(
        connection, sweep_id=sweep_id, status="pending", detail=f"retry {retried} evaluation(s)"
    )
    session.flush()
    return int(retried)


def rerun_trial(
    session: Session, sweep_id: int, trial_id: int, *, overrides: dict[str, Any]
) -> SweepTrial:
    """A new trial with the parent's settings and `overrides`, linked to its parent."""
    sweep = get_sweep(session, sweep_id)
    parent = session.get(SweepTrial, trial_id)
    if parent is None or parent.sweep_id != sweep_id:
        raise NotFound(f"Trial {trial_id} is not in sweep {sweep_id}.")
    if sweep.started_at is None:
        raise Conflict(f"Sweep {sweep_id} has not started yet.")
    config = resolved_config(overrides, None, parent.config, pointer="/overrides")
    if config.device == "cuda":  # CPU workers leave it queued: the sweep would never end
        require_gpu_worker("This trial's settings")
    _reopen(session, sweep)
    spec = SweepSpec.model_validate(sweep.spec)
    number = (
        session.connection()
        .execute(select(func.max(Trial.c.number) + 1).where(Trial.c.sweep_id == sweep_id))
        .scalar_one()
    )
    trial = SweepTrial(
        sweep_id=sweep_id,
        number=int(number),
        source="rerun",
        params={**parent.params, **overrides},
        config=config.model_dump(mode="json"),
        config_hash=config_hash(config),
        parent_id=parent.id,
        overrides=overrides,
        metrics={},
        tags_text=parent.tags_text + ("" if ",rerun," in parent.tags_text else "rerun,"),
    )
    session.add(trial)
    session.flush()
    assert trial.id is not None
    add_evaluations(session.connection(), sweep_id, trial.id, spec)
    record_event(
        session.connection(),
        sweep_id=sweep_id,
        trial_id=trial.id,
        status="pending",
        detail=f"rerun of trial {parent.id}",
    )
    return trial
