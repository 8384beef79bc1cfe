"""Training runs from the API's side: create (idempotently), list, read, cancel, metrics."""

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, func, true, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.errors import validation_errors as format_validation_errors
from app.core.logs import current_request_id
from app.core.version import code_version
from app.models import Criterion, TrainingMetric, TrainingRun
from app.runs import fanout
from app.runs.schemas import EpochMetrics, RunCreate, RunCriterionPublic, RunMetrics, RunPublic
from app.runs.training_defaults import production_config
from app.runs.wakeups import require_gpu_worker, wake_after_commit
from ml.config import LicchaviConfig, config_hash


def resolved_config(
    overrides: dict[str, Any],
    solver: str | None,
    defaults: LicchaviConfig | dict[str, Any] | None = None,
    *,
    pointer: str = "/config",
) -> LicchaviConfig:
    """Validate overrides (over `defaults`: the promoted settings, or a trial's) against the
    engine's settings (ml.config imports pydantic, not torch); errors point under `pointer`."""
    base = defaults.model_dump(mode="json") if isinstance(defaults, LicchaviConfig) else defaults
    values = {**(base or {}), **overrides}
    if solver is not None:
        values["solver"] = solver
    try:
        return LicchaviConfig.model_validate(values)
    except ValidationError as exc:
        errors = format_validation_errors(exc.errors())
        for error in errors:
            error["pointer"] = pointer + error["pointer"]
            if error["type"] == "extra_forbidden":
                error["message"] = "unknown setting"
        raise InvalidInput(
            f"{errors[0]['pointer']}: {errors[0]['message']}", errors=errors
        ) from exc


def _request_hash(payload: RunCreate, config: LicchaviConfig) -> str:
    """The request as validated, so that bodies meaning the same run hash alike: `"w": 1` and
    `"w": 1.0`, criteria in any order, the solver named in `config` or beside it. Only the
    settings the request names count, so a retry after a promotion of other defaults replays."""
    named = set(payload.config) | ({"solver"} if payload.solver is not None else set())
    settings = config.model_dump(mode="json")
    request = {
        "criteria": sorted(payload.criteria) if payload.criteria is not None else None,
        "config": {name: settings[name] for name in sorted(named)},
        "warm_start": payload.warm_start,
    }
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_criteria(session: Session, names: list[str] | None) -> None:
    if names is None:
        return
    known = set(session.exec(select(Criterion.name)).all())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidInput(
            f"/criteria: unknown criterion {unknown[0]!r}",
            errors=[
                {
                    "loc": ["body", "criteria"],
                    "pointer": "/criteria",
                    "message": f"unknown criterion {name!r}",
                    "type": "unknown_criterion",
                }
                for name in unknown
            ],
        )


def new_run(
    *,
    criteria: list[str] | None,
    config: LicchaviConfig,
    trigger: str,
    warm_start: bool,
    not_before: datetime | None = None,
) -> TrainingRun:
    names = sorted(criteria) if criteria is not None else None
    return TrainingRun(
        trigger=trigger,
        criteria=names,
        scope=",".join(names or []),
        solver=config.solver,
        config=config.model_dump(mode="json"),
        config_hash=config_hash(config),
        code_version=code_version(),
        warm_start=warm_start,
        max_epochs=config.epochs if config.solver == "faithful" else config.max_iterations,
        not_before=not_before or datetime.now(UTC),
        # Bound by the API request that queues it (None from the CLI or a worker).
        request_id=current_request_id(),
    )


def create_run(
    session: Session,
    *,
    payload: RunCreate,
    caller: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[TrainingRun, bool]:
    """A queued manual run, woken after commit; returns (run, created).

    `caller` is the credential that asks (`Principal.credential`). An Idempotency-Key is that
    caller's own: a retry of the same request returns the run it created, the same key with a
    different request is a conflict, and another caller's same key is another request.
    """
    if idempotency_key is not None and caller is None:
        raise ValueError("an Idempotency-Key needs the caller it belongs to")
    config = resolved_config(payload.config, payload.solver, production_config(session))
    request_hash = _request_hash(payload, config)
    if caller is not None and idempotency_key is not None:
        existing = _by_idempotency_key(session, caller, idempotency_key, request_hash)
        if existing is not None:
            return existing, False
    _check_criteria(session, payload.criteria)
    if config.device == "cuda":
        require_gpu_worker("This run")
    run = new_run(
        criteria=payload.criteria, config=config, trigger="manual", warm_start=payload.warm_start
    )
    run.caller = caller
    run.idempotency_key = idempotency_key
    run.request_hash = request_hash
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        # A concurrent request of the same caller with the same key won the insert.
        if caller is None or idempotency_key is None:
            raise
        existing = _by_idempotency_key(session, caller, idempotency_key, request_hash)
        if existing is None:
            raise
        return existing, False
    assert run.id is not None
    wake_after_commit(session, run_id=run.id)
    return run, True


def _by_idempotency_key(
    session: Session, caller: str, key: str, request_hash: str
) -> TrainingRun | None:
    run = session.exec(
        select(TrainingRun).where(TrainingRun.caller == caller, TrainingRun.idempotency_key == key)
    ).first()
    if run is not None and run.request_hash != request_hash:
        raise Conflict("This Idempotency-Key was used with a different request; use a new key.")
    return run


def get_run(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"No training run {run_id}.")
    return run


def list_runs(
    session: Session,
    *,
    status: str | None,
    trigger: str | None,
    criterion: str | None,
    limit: int,
    offset: int,
) -> tuple[list[TrainingRun], int]:
    """Newest first (id descending, which is also creation order)."""
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(col(TrainingRun.status) == status)
    if trigger is not None:
        conditions.append(col(TrainingRun.trigger) == trigger)
    if criterion is not None:
        # A run on every criterion (scope "") trains this one too.
        conditions.append(
            (col(TrainingRun.scope) == "")
            | (("," + col(TrainingRun.scope) + ",").contains("," + criterion + ","))
        )
    where = and_(true(), *conditions)
    total = session.exec(select(func.count()).select_from(TrainingRun).where(where)).one()
    runs = session.exec(
        select(TrainingRun)
        .where(where)
        .order_by(col(TrainingRun.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(runs), int(total)


def cancel_run(session: Session, run_id: int) -> TrainingRun:
    """A queued run is cancelled at once; a running one is asked to stop at its next epoch."""
    run = get_run(session, run_id)
    now = datetime.now(UTC)
    # Conditional updates: a worker may claim or finish the run between our read and write.
    cancelled_queued = session.execute(
        update(TrainingRun)
        .where(col(TrainingRun.id) == run_id, col(TrainingRun.status) == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if not cancelled_queued:
        asked = session.execute(
            update(TrainingRun)
            .where(col(TrainingRun.id) == run_id, col(TrainingRun.status) == "running")
            .values(cancel_requested=True)
        ).rowcount  # type: ignore[attr-defined]
        if not asked:
            session.refresh(run)
            raise Conflict(f"Run {run_id} is {run.status}; only queued or running runs cancel.")
    session.refresh(run)
    return run


def metric_summary(session: Session, run_id: int) -> dict[str, dict[str, float]]:
    """Per criterion, each loss term at the latest epoch written."""
    latest = (
        select(TrainingMetric.criterion, func.max(TrainingMetric.epoch).label("epoch"))
        .where(TrainingMetric.run_id == run_id)
        .group_by(col(TrainingMetric.criterion))
        .subquery()
    )
    rows = session.exec(
        select(TrainingMetric.criterion, TrainingMetric.name, TrainingMetric.value)
        .join(
            latest,
            and_(
                col(TrainingMetric.criterion) == latest.c.criterion,
                col(TrainingMetric.epoch) == latest.c.epoch,
            ),
        )
        .where(TrainingMetric.run_id == run_id)
    ).all()
    summary: dict[str, dict[str, float]] = {}
    for criterion, name, value in rows:
        summary.setdefault(criterion, {})[name] = value
    return summary


def metric_history(session: Session, run_id: int) -> RunMetrics:
    get_run(session, run_id)
    rows = session.exec(
        select(
            TrainingMetric.criterion,
            TrainingMetric.epoch,
            TrainingMetric.name,
            TrainingMetric.value,
        )
        .where(TrainingMetric.run_id == run_id)
        .order_by(
            col(TrainingMetric.criterion), col(TrainingMetric.epoch), col(TrainingMetric.name)
        )
    ).all()
    items: list[EpochMetrics] = []
    for criterion, epoch, name, value in rows:
        if not items or (items[-1].criterion, items[-1].epoch) != (criterion, epoch):
            items.append(EpochMetrics(criterion=criterion, epoch=epoch, values={}))
        items[-1].values[name] = value
    return RunMetrics(run_id=run_id, items=items)


def eta_seconds(run: TrainingRun, now: datetime | None = None) -> float | None:
    if run.status != "running" or run.started_at is None or run.progress <= 0:
        return None
    now = now or datetime.now(UTC)
    started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
    elapsed = (now - started).total_seconds()
    return max(0.0, elapsed * (1 - run.progress) / run.progress)


def criteria_progress(session: Session, run_ids: list[int]) -> dict[int, list[RunCriterionPublic]]:
    """Per run, its criteria as workers claim and train them (empty before they are listed)."""
    rows = fanout.criteria_of(session.connection(), run_ids)
    return {
        run_id: [
            RunCriterionPublic(
                criterion=str(row["criterion"]),
                status=row["status"],
                progress=float(row["progress"]),
                epoch=int(row["epoch"]),
                max_epochs=row["max_epochs"],
                attempt=int(row["attempt"]),
                worker=row["lease_owner"] or row["trained_by"],
                error=row["error"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
            )
            for row in items
        ]
        for run_id, items in rows.items()
    }


def public(
    run: TrainingRun,
    *,
    metrics: dict[str, dict[str, float]] | None = None,
    criteria: list[RunCriterionPublic] | None = None,
) -> RunPublic:
    assert run.id is not None
    return RunPublic(
        id=run.id,
        status=run.status,
        trigger=run.trigger,
        criteria=run.criteria,
        solver=run.solver,
        config=run.config,
        config_hash=run.config_hash,
        code_version=run.code_version,
        data_fingerprint=run.data_fingerprint,
        n_comparisons=run.n_comparisons,
        n_trusted=run.n_trusted,
        warm_start=run.warm_start,
        progress=run.progress,
        epoch=run.epoch,
        max_epochs=run.max_epochs,
        current_criterion=run.current_criterion,
        attempt=run.attempt,
        cancel_requested=run.cancel_requested,
        error=run.error,
        eta_seconds=eta_seconds(run),
        metrics=metrics,
        criteria_progress=criteria or None,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        heartbeat_at=run.heartbeat_at,
    )
