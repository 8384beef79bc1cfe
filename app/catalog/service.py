"""Videos with their comparison counts, and the criteria list."""

from typing import Any

from sqlalchemy import func, literal_column, union_all
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from app.catalog.schemas import CriterionCreate, CriterionPublic, VideoPublic
from app.core.errors import Conflict, NotFound
from app.models import Comparison, Criterion, Video


def list_videos(
    session: Session, *, criterion: str | None, limit: int, offset: int
) -> tuple[list[VideoPublic], int]:
    """Videos in id order with how many comparisons and distinct contributors each has."""
    criterion_pk = None
    if criterion is not None:
        criterion_pk = session.exec(select(Criterion.id).where(Criterion.name == criterion)).first()
        if criterion_pk is None:
            raise NotFound(f"Unknown criterion {criterion!r}.")
    total = session.exec(select(func.count()).select_from(Video)).one()
    page = session.exec(select(Video).order_by(Video.id).limit(limit).offset(offset)).all()  # type: ignore[arg-type]
    ids = [v.id for v in page]
    counts: dict[int, tuple[int, int]] = {}
    if ids:
        sides = []
        for column in (Comparison.video_a_id, Comparison.video_b_id):
            side = select(column.label("video_id"), Comparison.user_id).where(column.in_(ids))  # type: ignore[attr-defined]
            if criterion_pk is not None:
                side = side.where(Comparison.criterion_id == criterion_pk)
            sides.append(side)
        both = union_all(*sides).subquery()
        video_col: Any = both.c.video_id
        stmt = select(
            video_col, func.count(literal_column("*")), func.count(both.c.user_id.distinct())
        ).group_by(video_col)
        counts = {vid: (n, c) for vid, n, c in session.execute(stmt)}
    items = [
        VideoPublic(
            video_id=v.external_id,
            n_comparisons=counts.get(v.id or 0, (0, 0))[0],
            n_contributors=counts.get(v.id or 0, (0, 0))[1],
            created_at=v.created_at,
        )
        for v in page
    ]
    return items, int(total)


def list_criteria(session: Session) -> list[CriterionPublic]:
    rows = session.exec(select(Criterion).order_by(Criterion.id)).all()  # type: ignore[arg-type]
    return [CriterionPublic(name=c.name, label=c.label, is_main=c.is_main) for c in rows]


def create_criterion(session: Session, *, payload: CriterionCreate) -> CriterionPublic:
    if session.exec(select(Criterion.id).where(Criterion.name == payload.name)).first() is not None:
        raise Conflict(f"Criterion {payload.name!r} exists already.")
    row = Criterion(name=payload.name, label=payload.label)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:  # a concurrent request created it first
        raise Conflict(f"Criterion {payload.name!r} exists already.") from exc
    return CriterionPublic(name=row.name, label=row.label, is_main=row.is_main)
