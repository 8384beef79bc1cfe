"""PNG plots of a run: loss terms per epoch, and the histogram of its global scores."""

import io
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from app.core.errors import NotFound
from app.runs.service import get_run, metric_history

LOSS_TERMS = ("fit", "s", "gen", "reg")


def _figure(n_panels: int) -> tuple[Any, list[Any]]:
    # Imported here: plotting is only needed by these two endpoints, never at start-up.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2 * n_panels), dpi=90, layout="constrained")
    axes = figure.subplots(n_panels, 1, squeeze=False)[:, 0]
    return figure, list(axes)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_plot(session: Session, run_id: int) -> bytes:
    history = metric_history(session, run_id)
    criteria = sorted({item.criterion for item in history.items})
    if not criteria:
        raise NotFound(f"Run {run_id} has no metrics yet.")
    figure, axes = _figure(len(criteria))
    for axis, criterion in zip(axes, criteria, strict=True):
        rows = [item for item in history.items if item.criterion == criterion]
        for term in LOSS_TERMS:
            points = [(row.epoch, row.values[term]) for row in rows if term in row.values]
            if points:
                epochs, values = zip(*points, strict=True)
                axis.plot(epochs, values, label=term)
        axis.set_title(f"run {run_id} — {criterion}")
        axis.set_xlabel("epoch")
        axis.set_ylabel("loss term")
        axis.legend()
    return _png(figure)


def scores_plot(session: Session, run_id: int) -> bytes:
    get_run(session, run_id)
    rows = session.execute(
        text(
            # A run stores its scores before it succeeds; until then they are not its scores.
            "SELECT c.name, g.score FROM global_scores g JOIN criteria c ON c.id = g.criterion_id"
            " JOIN training_runs r ON r.id = g.run_id AND r.status = 'succeeded'"
            " WHERE g.run_id = :run ORDER BY c.name"
        ),
        {"run": run_id},
    ).all()
    by_criterion: dict[str, list[float]] = {}
    for name, score in rows:
        by_criterion.setdefault(name, []).append(score)
    if not by_criterion:
        raise NotFound(f"Run {run_id} has no scores.")
    figure, axes = _figure(len(by_criterion))
    for axis, (criterion, scores) in zip(axes, by_criterion.items(), strict=True):
        axis.hist(scores, bins=50)
        axis.set_title(f"run {run_id} — {criterion}: {len(scores)} videos")
        axis.set_xlabel("global score")
        axis.set_ylabel("videos")
    return _png(figure)
