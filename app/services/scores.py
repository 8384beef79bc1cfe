"""Reading scores: the published run's global scores, a video's, a user's; any succeeded run's."""

import math
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy import text
from sqlmodel import Session

from app.core.errors import Conflict, NotFound
from app.schemas.scores import (
    GlobalScorePublic,
    LocalScorePublic,
    ScorePage,
    UserScores,
    VideoScores,
)

MAIN_CRITERION_FALLBACK = "largely_recommended"


def display_score(score: float) -> float:
    """Tournesol's readable scale: 100·x/sqrt(1+x²), in (-100, 100)."""
    return 100.0 * score / math.sqrt(1.0 + score * score)


def main_criterion(session: Session) -> str:
    name = session.execute(
        text("SELECT name FROM criteria WHERE is_main ORDER BY id LIMIT 1")
    ).scalar()
    return str(name) if name is not None else MAIN_CRITERION_FALLBACK


def _criterion_and_published(session: Session, criterion: str) -> tuple[int, int | None]:
    row = session.execute(
        text(
            "SELECT c.id, p.run_id FROM criteria c"
            " LEFT JOIN published_runs p ON p.criterion_id = c.id WHERE c.name = :name"
        ),
        {"name": criterion},
    ).first()
    if row is None:
        raise NotFound(f"Unknown criterion {criterion!r}.")
    return int(row[0]), (int(row[1]) if row[1] is not None else None)


def _check_readable_run(session: Session, run_id: int) -> None:
    status = session.execute(
        text("SELECT status FROM training_runs WHERE id = :id"), {"id": run_id}
    ).scalar()
    if status is None:
        raise NotFound(f"No training run {run_id}.")
    if status != "succeeded":
        raise Conflict(f"Run {run_id} is {status}; only succeeded runs have scores.")


# A run's scores never change once written, so its totals can be remembered for good.
_TOTALS: dict[tuple[str, int, int, int], int] = {}
_TOTALS_KEPT = 4096


def _cached_total(key: tuple[str, int, int, int], count: Callable[[], int]) -> int:
    total = _TOTALS.get(key)
    if total is None:
        total = count()
        if len(_TOTALS) >= _TOTALS_KEPT:
            _TOTALS.clear()
        _TOTALS[key] = total
    return total


def global_scores(
    session: Session,
    *,
    criterion: str | None,
    order: Literal["asc", "desc"],
    limit: int,
    offset: int,
    min_contributors: int,
    run_id: int | None,
) -> ScorePage:
    """A page of global scores, every item from the same run (the published one by default)."""
    name = criterion or main_criterion(session)
    criterion_id, published = _criterion_and_published(session, name)
    if run_id is not None:
        _check_readable_run(session, run_id)
    chosen = run_id if run_id is not None else published
    if chosen is None:
        return ScorePage(items=[], total=0, limit=limit, offset=offset, criterion=name, run_id=None)
    params = {"run": chosen, "criterion": criterion_id, "min": min_contributors}
    where = "g.run_id = :run AND g.criterion_id = :criterion AND g.n_contributors >= :min"

    def count() -> int:
        return int(
            session.execute(
                text(f"SELECT count(*) FROM global_scores g WHERE {where}"), params
            ).scalar_one()
        )

    bind = session.get_bind()
    total = _cached_total((str(bind.engine.url), chosen, criterion_id, min_contributors), count)
    direction = "DESC" if order == "desc" else "ASC"
    rows = session.execute(
        text(
            "SELECT v.external_id, g.score, g.uncertainty, g.n_comparisons, g.n_contributors"
            " FROM global_scores g JOIN videos v ON v.id = g.video_id"
            f" WHERE {where} ORDER BY g.score {direction}, g.video_id {direction}"
            " LIMIT :limit OFFSET :offset"
        ),
        {**params, "limit": limit, "offset": offset},
    ).all()
    items = [
        GlobalScorePublic(
            video_id=video,
            criterion=name,
            score=score,
            display_score=display_score(score),
            uncertainty=uncertainty,
            n_comparisons=n_comparisons,
            n_contributors=n_contributors,
            run_id=chosen,
        )
        for video, score, uncertainty, n_comparisons, n_contributors in rows
    ]
    return ScorePage(
        items=items, total=total, limit=limit, offset=offset, criterion=name, run_id=chosen
    )


def video_scores(session: Session, *, video_id: str) -> VideoScores:
    """The video's published global score on every criterion that has one."""
    video_pk = session.execute(
        text("SELECT id FROM videos WHERE external_id = :id"), {"id": video_id}
    ).scalar()
    if video_pk is None:
        raise NotFound(f"Unknown video {video_id!r}.")
    rows = session.execute(
        text(
            "SELECT c.name, g.score, g.uncertainty, g.n_comparisons, g.n_contributors, g.run_id"
            " FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
            " JOIN global_scores g ON g.run_id = p.run_id AND g.criterion_id = p.criterion_id"
            " AND g.video_id = :video ORDER BY c.name"
        ),
        {"video": video_pk},
    ).all()
    return VideoScores(
        video_id=video_id,
        scores=[
            GlobalScorePublic(
                video_id=video_id,
                criterion=criterion,
                score=score,
                display_score=display_score(score),
                uncertainty=uncertainty,
                n_comparisons=n_comparisons,
                n_contributors=n_contributors,
                run_id=run,
            )
            for criterion, score, uncertainty, n_comparisons, n_contributors, run in rows
        ],
    )


def user_scores(
    session: Session, *, user_id: str, criterion: str | None, limit: int, offset: int
) -> UserScores:
    """The user's published local scores, by criterion then best first."""
    user_pk = session.execute(
        text("SELECT id FROM users WHERE external_id = :id"), {"id": user_id}
    ).scalar()
    if user_pk is None:
        raise NotFound(f"Unknown user {user_id!r}.")
    params: dict[str, Any] = {"user": user_pk, "limit": limit, "offset": offset}
    where = ""
    if criterion is not None:
        criterion_id, _published = _criterion_and_published(session, criterion)
        where = " AND p.criterion_id = :criterion"
        params["criterion"] = criterion_id
    source = (
        " FROM published_runs p"
        " JOIN local_scores l ON l.run_id = p.run_id AND l.criterion_id = p.criterion_id"
        f" AND l.user_id = :user{where}"
    )
    total = session.execute(text("SELECT count(*)" + source), params).scalar_one()
    rows = session.execute(
        text(
            "SELECT v.external_id, c.name, l.score, l.uncertainty, l.run_id"
            + source
            + " JOIN criteria c ON c.id = p.criterion_id JOIN videos v ON v.id = l.video_id"
            " ORDER BY c.name, l.score DESC, l.video_id LIMIT :limit OFFSET :offset"
        ),
        params,
    ).all()
    return UserScores(
        user_id=user_id,
        items=[
            LocalScorePublic(
                video_id=video, criterion=name, score=score, uncertainty=uncertainty, run_id=run
            )
            for video, name, score, uncertainty, run in rows
        ],
        total=int(total),
        limit=limit,
        offset=offset,
    )
