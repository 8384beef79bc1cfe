"""A contributor's judgement of one unordered pair of videos on one criterion."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.columns import timestamp_field


class Comparison(SQLModel, table=True):
    """One row per (user, unordered pair, criterion).

    The pair is stored sorted by external video id (`video_a` < `video_b`); when a client sends it
    the other way round the score's sign is flipped, so a re-post in either order is an update.
    A negative score prefers `video_a`, a positive one `video_b`.

    The id columns carry no foreign-key constraints: on PostgreSQL the four FK triggers cost twice
    the insert itself on bulk ingest. Rows are only written by `app.comparisons.upsert`, which
    resolves every id from its table in the same transaction, and users, videos and criteria are
    never deleted.
    """

    __tablename__ = "comparisons"
    __table_args__ = (
        sa.UniqueConstraint(
            "user_id", "video_a_id", "video_b_id", "criterion_id", name="uq_comparison_key"
        ),
        sa.CheckConstraint("video_a_id <> video_b_id", name="ck_comparison_distinct_videos"),
        sa.CheckConstraint("score_max > 0", name="ck_comparison_score_max_positive"),
        sa.CheckConstraint(
            "score >= -score_max AND score <= score_max", name="ck_comparison_score_in_range"
        ),
    )

    # 64-bit on PostgreSQL: every attempted upsert draws a value from the sequence (an unchanged
    # row of a re-import too), so a long-lived deployment could run through 2³¹. (SQLite's
    # INTEGER PRIMARY KEY is the 64-bit rowid already, and only it autoincrements.)
    id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    )
    user_id: int
    video_a_id: int = Field(index=True)
    video_b_id: int = Field(index=True)
    criterion_id: int
    score: float
    score_max: float
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
