"""Fresh scores: a change of comparisons schedules a debounced, warm-started `auto` run."""

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from app.core.config import get_settings
from app.models import TrainingRun
from app.runs.service import new_run
from app.runs.training_defaults import production_config
from app.runs.wakeups import wake_after_commit
from ml.config import LicchaviConfig

QUEUED_AUTO = text("status = 'queued' AND trigger = 'auto'")
# Run by every write that changes comparisons: made once (a `text()` parses its SQL when made).
_AUTO_RUN_QUEUED = text(
    "SELECT 1 FROM training_runs WHERE scope = :scope AND status = 'queued' AND trigger = 'auto'"
)


def comparisons_changed(
    session: Session, *, criteria: Iterable[str] | None, changed: int = 1
) -> list[int]:
    """Schedule an auto run for each changed criterion (None: every published criterion).

    At most one auto run per criterion waits in the queue: a change while one is queued is
    picked up by that run, which reads the comparisons when it starts. Returns new run ids.
    """
    settings = get_settings()
    if not settings.auto_train_enabled or changed <= 0:
        return []
    names = sorted(set(criteria)) if criteria is not None else _published_criteria(session)
    created = []
    for name in names:
        run_id = _schedule(session, criterion=name, delay=settings.auto_train_delay_seconds)
        if run_id is not None:
            created.append(run_id)
    return created


def _published_criteria(session: Session) -> list[str]:
    rows = session.execute(
        text(
            "SELECT c.name FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
            " ORDER BY c.name"
        )
    ).all()
    return [row[0] for row in rows]


def _schedule(session: Session, *, criterion: str, delay: float) -> int | None:
    already = session.execute(_AUTO_RUN_QUEUED, {"scope": criterion}).first()
    if already:
        return None
    delay = _spaced(session, criterion=criterion, delay=delay)
    run = new_run(
        criteria=[criterion],
        config=_published_config(session, criterion),
        trigger="auto",
        warm_start=True,
        not_before=datetime.now(UTC) + timedelta(seconds=delay),
    )
    values = _column_values(run)
    dialect = session.get_bind().dialect.name
    insert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(TrainingRun)
    # A concurrent writer may queue the same criterion's run between our check and insert; the
    # partial unique index makes the second insert a no-op instead of a second queued run.
    statement = (
        insert.values(**values)
        .on_conflict_do_nothing(index_elements=["scope"], index_where=QUEUED_AUTO)
        .returning(TrainingRun.id)
    )
    run_id = session.execute(statement).scalar()
    if run_id is None:
        return None
    wake_after_commit(session, run_id=int(run_id), countdown=delay)
    return int(run_id)


# The longest an auto run's start is pushed back by `_spaced`: freshness stays well inside the
# 30 s promised, whatever the runs take.
MAX_SPACED_DELAY_SECONDS = 10.0


def _spaced(session: Session, *, criterion: str, delay: float) -> float:
    """The debounce of a new auto run: `delay`, or longer when the criterion's last auto run
    trained long, so that under a steady stream of writes the worker trains at most about
    1 / (1 + AUTO_TRAIN_SPACING_FACTOR) of the time (capped at MAX_SPACED_DELAY_SECONDS). Each
    auto run retrains on every comparison, so back-to-back runs would otherwise take a core (and
    the write lock, while they store scores) for as long as writes arrive, and longer the more
    comparisons there are; a change is still picked up by the next run, a little later."""
    factor = get_settings().auto_train_spacing_factor
    if factor <= 0:
        return delay
    last = session.execute(
        select(col(TrainingRun.started_at), col(TrainingRun.finished_at))
        .where(
            col(TrainingRun.scope) == criterion,
            col(TrainingRun.trigger) == "auto",
            col(TrainingRun.finished_at).is_not(None),
        )
        .order_by(col(TrainingRun.id).desc())
        .limit(1)
    ).first()
    if last is None or last[0] is None:
        return delay
    took = (last[1] - last[0]).total_seconds()
    return max(delay, min(factor * took, MAX_SPACED_DELAY_SECONDS))


def _published_config(session: Session, criterion: str) -> LicchaviConfig:
    """The promoted training defaults when a sweep promoted some; otherwise the settings of the
    criterion's published run, so auto runs keep its hyperparameters."""
    promoted = production_config(session)
    if promoted is not None:
        return promoted
    row = session.execute(
        text(
            "SELECT r.config FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
            " JOIN training_runs r ON r.id = p.run_id WHERE c.name = :name"
        ),
        {"name": criterion},
    ).first()
    if row is None:
        return LicchaviConfig()
    config = row[0]
    if isinstance(config, str):  # SQLite hands JSON back as text through raw SQL
        config = json.loads(config)
    return LicchaviConfig.model_validate(config)


def _column_values(run: TrainingRun) -> dict[str, Any]:
    values = run.model_dump(exclude={"id"})
    return {key: value for key, value in values.items() if value is not None}
