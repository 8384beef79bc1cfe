"""The training settings in force for production runs: the newest promotion not reverted."""

from sqlalchemy import select
from sqlmodel import Session, col

from app.models import TrainingDefaults
from ml.config import LicchaviConfig


def active_defaults(session: Session) -> TrainingDefaults | None:
    return session.execute(
        select(TrainingDefaults)
        .where(col(TrainingDefaults.reverted_at).is_(None))
        .order_by(col(TrainingDefaults.id).desc())
        .limit(1)
    ).scalar_one_or_none()


def production_config(session: Session) -> LicchaviConfig | None:
    """The promoted settings in force; the library defaults once every promotion has been
    reverted; None when nothing was ever promoted (callers keep their own default)."""
    active = active_defaults(session)
    if active is not None:
        return LicchaviConfig.model_validate(active.config)
    ever = session.execute(select(col(TrainingDefaults.id)).limit(1)).first()
    return LicchaviConfig() if ever is not None else None
