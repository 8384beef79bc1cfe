"""Reading a sweep's results: filtered trial lists, the leaderboard over seeds, comparisons of
trials, CSV export, and the data behind the plots."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from sqlalchemy import and_, func, select
from sqlmodel import Session

from app.core.errors import InvalidInput, NotFound
from app.models import SweepEvaluation, SweepEvent, SweepTrial
from app.sweeps import plots as sweep_plots
from app.sweeps import ranking
from app.sweeps import stats as sweep_stats
from app.sweeps.control import get_sweep
from app.sweeps.query import FilterError, parse_filter, parse_sort
from ml.sweep.spec import SweepSpec

Trial = SweepTrial.__table__  # type: ignore[attr-defined]
Evaluation = SweepEvaluation.__table__  # type: ignore[attr-defined]
Event = SweepEvent.__table__  # type: ignore[attr-defined]

TRIAL_COLUMNS = (
    Trial.c.id,
    Trial.c.sweep_id,
    Trial.c.number,
    Trial.c.status,
    Trial.c.source,
    Trial.c.params,
    Trial.c.config_hash,
    Trial.c.parent_id,
    Trial.c.overrides,
    Trial.c.metrics,
    Trial.c.objective,
    Trial.c.n_succeeded,
    Trial.c.tags_text,
    Trial.c.created_at,
    Trial.c.finished_at,
)


def _invalid(parameter: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"/{parameter}: {message}",
        errors=[
            {
                "loc": ["query", parameter],
                "pointer": f"/{parameter}",
                "message": message,
                "type": "invalid_query",
            }
        ],
    )


def trial_public(row: Any) -> dict[str, Any]:
    values = dict(row._mapping)
    tags = values.pop("tags_text", ",")
    values["tags"] = [tag for tag in tags.split(",") if tag]
    return values


def list_trials(
    session: Session,
    sweep_id: int,
    *,
    filter_text: str | None,
    sort_text: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """Trials matching the filter language (AND/OR/NOT, IN, BETWEEN over params., metrics.,
    tag, status...), sorted, paged; the filtering and sorting run in the database."""
    get_sweep(session, sweep_id)
    condition = Trial.c.sweep_id == sweep_id
    try:
        if filter_text:
            condition = and_(condition, parse_filter(filter_text, Trial))
        order = parse_sort(sort_text, Trial) if sort_text else [Trial.c.number, Trial.c.id]
    except FilterError as exc:
        raise _invalid("sort" if str(exc).startswith("sort") else "filter", str(exc)) from exc
    connection = session.connection()
    total = connection.execute(
        select(func.count()).select_from(Trial).where(condition)
    ).scalar_one()
    rows = connection.execute(
        select(*TRIAL_COLUMNS).where(condition).order_by(*order).limit(limit).offset(offset)
    ).all()
    return [trial_public(row) for row in rows], int(total)


def trial_detail(session: Session, sweep_id: int, trial_id: int) -> dict[str, Any]:
    connection = session.connection()
    row = connection.execute(
        select(*TRIAL_COLUMNS, Trial.c.config, Trial.c.optuna_trial_id).where(
            Trial.c.id == trial_id, Trial.c.sweep_id == sweep_id
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"Trial {trial_id} is not in sweep {sweep_id}.")
    trial = trial_public(row)
    evaluations = connection.execute(
        select(
            Evaluation.c.id,
            Evaluation.c.unit_index,
            Evaluation.c.seed,
            Evaluation.c.fold,
            Evaluation.c.status,
            Evaluation.c.attempt,
            Evaluation.c.progress,
            Evaluation.c.metrics,
            Evaluation.c.history,
            Evaluation.c.error,
            Evaluation.c.log,
            Evaluation.c.config_hash,
            Evaluation.c.code_version,
            Evaluation.c.git_commit,
            Evaluation.c.data_fingerprint,
            Evaluation.c.split_fingerprint,
            Evaluation.c.worker,
            Evaluation.c.started_at,
            Evaluation.c.finished_at,
        )
        .where(Evaluation.c.trial_id == trial_id)
        .order_by(Evaluation.c.unit_index)
    ).all()
    events = connection.execute(
        select(Event.c.evaluation_id, Event.c.status, Event.c.attempt, Event.c.detail, Event.c.at)
        .where(Event.c.trial_id == trial_id)
        .order_by(Event.c.id)
    ).all()
    trial["evaluations"] = [dict(evaluation._mapping) for evaluation in evaluations]
    trial["status_history"] = [dict(event._mapping) for event in events]
    return trial


def events(
    session: Session, sweep_id: int, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    get_sweep(session, sweep_id)
    connection = session.connection()
    condition = Event.c.sweep_id == sweep_id
    total = connection.execute(
        select(func.count()).select_from(Event).where(condition)
    ).scalar_one()
    rows = connection.execute(
        select(Event).where(condition).order_by(Event.c.id).limit(limit).offset(offset)
    ).all()
    return [dict(row._mapping) for row in rows], int(total)


def leaderboard(
    session: Session,
    sweep_id: int,
    *,
    metric: str | None,
    direction: str | None,
    confidence: float,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Configurations ranked by the pessimistic end of a bootstrap interval of their mean over
    seeds/folds, each with a paired test against the incumbent (the base settings)."""
    sweep = get_sweep(session, sweep_id)
    metric = metric or sweep.objective_metric
    if metric != sweep.objective_metric and direction is None:
        raise _invalid("direction", "give the direction (maximize or minimize) of this metric")
    chosen = direction or sweep.direction
    if chosen not in ("maximize", "minimize"):
        raise _invalid("direction", "maximize or minimize")
    incumbent = ranking.incumbent_id(session, sweep)
    rows = sweep_stats.leaderboard(
        ranking.unit_values(session, sweep_id, metric),
        direction=chosen,  # type: ignore[arg-type]
        incumbent_id=incumbent,
        confidence=confidence,
        paired_window=(offset, limit),
    )
    trials = {
        row.id: row
        for row in session.connection().execute(
            select(
                Trial.c.id, Trial.c.number, Trial.c.params, Trial.c.status, Trial.c.source
            ).where(Trial.c.sweep_id == sweep_id)
        )
    }
    items = []
    for row in rows[offset : offset + limit]:
        trial = trials[row.trial_id]
        paired = row.vs_incumbent
        items.append(
            {
                "rank": row.rank,
                "trial_id": row.trial_id,
                "number": trial.number,
                "status": trial.status,
                "source": trial.source,
                "params": trial.params,
                "n": row.n,
                "mean": _json_float(row.mean),
                "std": _json_float(row.std),
                "ci_low": _json_float(row.ci_low),
                "ci_high": _json_float(row.ci_high),
                "vs_incumbent": None
                if paired is None
                else {
                    "incumbent_id": paired.incumbent_id,
                    "n_pairs": paired.n_pairs,
                    "mean_difference": _json_float(paired.mean_difference),
                    "ci_low": _json_float(paired.ci_low),
                    "ci_high": _json_float(paired.ci_high),
                    "p_value": None if paired.p_value is None else _json_float(paired.p_value),
                    "better": paired.better,
                },
            }
        )
    return {
        "metric": metric,
        "direction": chosen,
        "confidence": confidence,
        "incumbent_id": incumbent,
        "total": len(rows),
        "limit": limit,
        "offset": offset,
        "items": items,
    }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def compare(session: Session, sweep_id: int, trial_ids: list[int]) -> dict[str, Any]:
    """Only the settings that differ between the given trials, and their metrics side by side."""
    if len(trial_ids) < 2:
        raise _invalid("trials", "name at least two trials")
    rows = (
        session.connection()
        .execute(
            select(
                Trial.c.id, Trial.c.config, Trial.c.metrics, Trial.c.objective, Trial.c.status
            ).where(Trial.c.sweep_id == sweep_id, Trial.c.id.in_(trial_ids))
        )
        .all()
    )
    found = {row.id for row in rows}
    missing = [trial_id for trial_id in trial_ids if trial_id not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise NotFound(f"Trial(s) {shown} not in sweep {sweep_id}.")
    by_id = {row.id: row for row in rows}
    return {
        "trials": trial_ids,
        "differing": sweep_stats.differing_parameters({i: by_id[i].config for i in trial_ids}),
        "metrics": {i: by_id[i].metrics for i in trial_ids},
        "objective": {i: by_id[i].objective for i in trial_ids},
        "status": {i: by_id[i].status for i in trial_ids},
    }


def export_csv(session: Session, sweep_id: int) -> str:
    """One row per trial: identity, status, every parameter and every mean metric."""
    trials, _ = list_trials(
        session, sweep_id, filter_text=None, sort_text=None, limit=10**9, offset=0
    )
    params = sorted({name for trial in trials for name in trial["params"]})
    metrics = sorted({name for trial in trials for name in trial["metrics"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["trial_id", "number", "status", "source", "parent_id", "objective", "n_succeeded", "tags"]
        + [f"params.{name}" for name in params]
        + [f"metrics.{name}" for name in metrics]
    )
    for trial in trials:
        writer.writerow(
            [
                trial["id"],
                trial["number"],
                trial["status"],
                trial["source"],
                trial["parent_id"] if trial["parent_id"] is not None else "",
                "" if trial["objective"] is None else repr(trial["objective"]),
                trial["n_succeeded"],
                " ".join(trial["tags"]),
            ]
            + [_cell(trial["params"].get(name)) for name in params]
            + [_cell(trial["metrics"].get(name)) for name in metrics]
        )
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


PLOTS = ("loss-curves", "metric-vs-parameter", "parallel-coordinates", "importances")


def plot_data(
    session: Session,
    sweep_id: int,
    name: str,
    *,
    metric: str | None,
    x: str | None,
    series: str | None,
) -> dict[str, Any]:
    """The numbers behind one plot (the PNG is drawn from exactly these)."""
    sweep = get_sweep(session, sweep_id)
    connection = session.connection()
    trial_rows = connection.execute(
        select(Trial.c.id, Trial.c.params, Trial.c.status, Trial.c.objective).where(
            Trial.c.sweep_id == sweep_id
        )
    ).all()
    trials = [
        sweep_plots.TrialPoint(int(row.id), dict(row.params), row.status, row.objective)
        for row in trial_rows
    ]
    try:
        if name == "parallel-coordinates":
            return sweep_plots.parallel_coordinates_data(
                trials, objective_name=sweep.objective_metric
            )
        if name == "importances":
            return sweep_plots.importances_data(trials, sweep.direction)  # type: ignore[arg-type]
        with_history = name == "loss-curves"
        columns = [Evaluation.c.trial_id, Evaluation.c.unit_index, Evaluation.c.metrics]
        if with_history:
            columns.append(Evaluation.c.history)
        unit_rows = connection.execute(
            select(*columns).where(
                Evaluation.c.sweep_id == sweep_id, Evaluation.c.status == "succeeded"
            )
        ).all()
        units = [
            sweep_plots.UnitPoint(
                int(row.trial_id),
                int(row.unit_index),
                dict(row.metrics or {}),
                dict(row.history or {}) if with_history else {},
            )
            for row in unit_rows
        ]
        if name == "loss-curves":
            return sweep_plots.loss_curves_data(units, metric=metric or "loss")
        if name == "metric-vs-parameter":
            if x is None:
                parameters = sorted(SweepSpec.model_validate(sweep.spec).parameters)
                if not parameters:
                    raise _invalid("x", "name the parameter on the x axis")
                x = parameters[0]
            return sweep_plots.metric_vs_parameter_data(
                trials, units, metric or sweep.objective_metric, x, series
            )
    except sweep_plots.PlotUnavailable as exc:
        raise NotFound(str(exc)) from exc
    raise NotFound(f"No plot {name!r}; plots: {', '.join(PLOTS)}.")


def plot_png(name: str, data: dict[str, Any]) -> bytes:
    draw = {
        "loss-curves": sweep_plots.loss_curves_png,
        "metric-vs-parameter": sweep_plots.metric_vs_parameter_png,
        "parallel-coordinates": sweep_plots.parallel_coordinates_png,
        "importances": sweep_plots.importances_png,
    }[name]
    try:
        return draw(data)
    except sweep_plots.PlotUnavailable as exc:
        raise NotFound(str(exc)) from exc
