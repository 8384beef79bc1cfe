"""Reading scores: a video's published global scores, a user's local ones."""

from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from app.core.errors import NotFound
from app.scores.pages import criterion_id, global_score_item
from app.scores.schemas import LocalScorePublic, UserScores, VideoScores


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
            global_score_item(video_id, criterion, run, score, uncertainty, n, users)
            for criterion, score, uncertainty, n, users, run in rows
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
        params["criterion"] = criterion_id(session, criterion)
        where = " AND p.criterion_id = :criterion"
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
