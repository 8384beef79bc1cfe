"""A consistent snapshot of the comparisons a run trains on, as columns ready for the engine."""

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.runs.trust import trusted_users


@dataclass(frozen=True)
class ComparisonSnapshot:
    """Comparisons in the public column layout, and the database ids behind the external ones."""

    frame: pd.DataFrame  # public_username, video_a, video_b, criteria, score, score_max
    taken_at: datetime
    user_ids: dict[str, int]
    video_ids: dict[str, int]
    criterion_ids: dict[str, int]
    # External ids of the users an operator trusts, read in the same transaction.
    trusted: frozenset[str] = frozenset()

    @property
    def n_comparisons(self) -> int:
        return len(self.frame)


def load_snapshot(connection: Connection, *, criteria: list[str] | None) -> ComparisonSnapshot:
    """Read the comparisons (of `criteria`, or all) in id order, which fixes the engine's input.

    Only integer columns cross the wire for the big table; external ids are mapped afterwards
    from the (much smaller) users and videos tables.
    """
    taken_at = datetime.now(UTC)
    criterion_rows = connection.execute(text("SELECT id, name FROM criteria")).all()
    criterion_ids = {name: int(pk) for pk, name in criterion_rows}
    wanted = (
        list(criterion_ids.values()) if criteria is None else [criterion_ids[c] for c in criteria]
    )
    where = "" if criteria is None else f"WHERE criterion_id IN ({','.join(map(str, wanted))})"
    # Plain DBAPI tuples: numpy reads them directly, where SQLAlchemy rows cost a key lookup
    # per value.
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            "SELECT user_id, video_a_id, video_b_id, criterion_id, score, score_max"
            f" FROM comparisons {where} ORDER BY id"
        )
        columns = np.array(cursor.fetchall(), dtype=np.float64).reshape(-1, 6)
    finally:
        cursor.close()
    users = pd.Series(dict(connection.execute(text("SELECT id, external_id FROM users")).all()))
    videos = pd.Series(dict(connection.execute(text("SELECT id, external_id FROM videos")).all()))
    names = pd.Series({pk: name for name, pk in criterion_ids.items()})
    as_ids = columns[:, :4].astype(np.int64)
    frame = pd.DataFrame(
        {
            "public_username": users.reindex(as_ids[:, 0]).to_numpy(dtype=object),
            "video_a": videos.reindex(as_ids[:, 1]).to_numpy(dtype=object),
            "video_b": videos.reindex(as_ids[:, 2]).to_numpy(dtype=object),
            "criteria": names.reindex(as_ids[:, 3]).to_numpy(dtype=object),
            "score": columns[:, 4],
            "score_max": columns[:, 5],
        }
    )
    return ComparisonSnapshot(
        frame=frame,
        taken_at=taken_at,
        user_ids={str(external): int(pk) for pk, external in zip(users.index, users, strict=True)},
        video_ids={
            str(external): int(pk) for pk, external in zip(videos.index, videos, strict=True)
        },
        criterion_ids=criterion_ids,
        trusted=trusted_users(connection),
    )
