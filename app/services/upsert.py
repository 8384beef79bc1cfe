"""One-statement upsert of many comparisons, on PostgreSQL and on SQLite.

Rows are first normalised (pair sorted by external id, sign flipped when swapped, later duplicates
win), then the missing users and videos are inserted and all comparisons are written by a single
`INSERT … SELECT … ON CONFLICT DO UPDATE` whose source is the batch passed as arrays (PostgreSQL
`unnest`) or as a JSON document (SQLite `json_each`). Unchanged rows are not touched, so
`updated_at` only moves when a score really changes.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import text
from sqlmodel import Session

from app.models.base import utcnow

Status = Literal["created", "updated", "unchanged"]
ComparisonKey = tuple[str, str, str, str]  # user, video_a, video_b (sorted), criterion


@dataclass(frozen=True)
class ComparisonRow:
    """A validated comparison in stored orientation (video_a < video_b)."""

    user: str
    video_a: str
    video_b: str
    criterion: str
    score: float
    score_max: float

    @property
    def key(self) -> ComparisonKey:
        return (self.user, self.video_a, self.video_b, self.criterion)


def oriented(
    user: str, video_a: str, video_b: str, criterion: str, score: float, score_max: float
) -> ComparisonRow:
    """The stored form of a comparison: the pair sorted, the score's sign following the swap."""
    if video_a > video_b:
        video_a, video_b, score = video_b, video_a, -score
    return ComparisonRow(user, video_a, video_b, criterion, float(score) + 0.0, float(score_max))


@dataclass
class UpsertOutcome:
    statuses: dict[ComparisonKey, Status] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        return sum(1 for s in self.statuses.values() if s == status)

    @property
    def inserted(self) -> int:
        return self.count("created")

    @property
    def updated(self) -> int:
        return self.count("updated")

    @property
    def unchanged(self) -> int:
        return self.count("unchanged")


def deduplicate(rows: Iterable[ComparisonRow]) -> list[ComparisonRow]:
    """Keep the last row per key (a re-submission replaces), in key order to avoid deadlocks."""
    latest: dict[ComparisonKey, ComparisonRow] = {}
    for row in rows:
        latest[row.key] = row
    return [latest[k] for k in sorted(latest)]


def upsert_comparisons(session: Session, *, rows: Sequence[ComparisonRow]) -> UpsertOutcome:
    """Write `rows` (criteria must exist) and say, per key, whether it was created or updated."""
    batch = deduplicate(rows)
    outcome = UpsertOutcome()
    if not batch:
        return outcome
    now = utcnow()
    dialect = session.get_bind().dialect.name
    _insert_missing(session, dialect, "users", sorted({r.user for r in batch}), now)
    _insert_missing(
        session,
        dialect,
        "videos",
        sorted({r.video_a for r in batch} | {r.video_b for r in batch}),
        now,
    )
    if dialect == "postgresql":
        changed = _upsert_postgres(session, batch, now)
        for key, inserted in changed:
            outcome.statuses[key] = "created" if inserted else "updated"
    else:
        existing = _existing_keys_sqlite(session, batch)
        for key in _upsert_sqlite(session, batch, now):
            outcome.statuses[key] = "updated" if key in existing else "created"
    for row in batch:
        outcome.statuses.setdefault(row.key, "unchanged")
    return outcome


def _insert_missing(
    session: Session, dialect: str, table: str, external_ids: list[str], now: datetime
) -> None:
    if dialect == "postgresql":
        source = "unnest(CAST(:ids AS text[])) AS src(external_id)"
        params: dict[str, object] = {"ids": external_ids, "now": now}
    else:
        source = "(SELECT value AS external_id FROM json_each(:ids)) AS src"
        params = {"ids": json.dumps(external_ids), "now": now}
    session.execute(
        text(
            f"INSERT INTO {table} (external_id, created_at) "
            f"SELECT src.external_id, :now FROM {source} WHERE true "
            "ON CONFLICT (external_id) DO NOTHING"
        ),
        params,
    )


_UPSERT_TAIL = """
    ON CONFLICT (user_id, video_a_id, video_b_id, criterion_id) DO UPDATE
    SET score = excluded.score, score_max = excluded.score_max, updated_at = excluded.updated_at
    WHERE comparisons.score <> excluded.score OR comparisons.score_max <> excluded.score_max
"""

_JOINED_SOURCE = """
    SELECT u.id, va.id, vb.id, c.id, src.score, src.score_max, :now, :now
    FROM {source}
    JOIN users u ON u.external_id = src.user_ext
    JOIN videos va ON va.external_id = src.a_ext
    JOIN videos vb ON vb.external_id = src.b_ext
    JOIN criteria c ON c.name = src.criterion
    WHERE true
"""

_INSERT_HEAD = """
    INSERT INTO comparisons
        (user_id, video_a_id, video_b_id, criterion_id, score, score_max, created_at, updated_at)
"""

_RETURNING_KEY = """
    RETURNING
        (SELECT external_id FROM users WHERE id = comparisons.user_id),
        (SELECT external_id FROM videos WHERE id = comparisons.video_a_id),
        (SELECT external_id FROM videos WHERE id = comparisons.video_b_id),
        (SELECT name FROM criteria WHERE id = comparisons.criterion_id)
"""


def _upsert_postgres(
    session: Session, batch: list[ComparisonRow], now: datetime
) -> list[tuple[ComparisonKey, bool]]:
    source = (
        "unnest(CAST(:users AS text[]), CAST(:a AS text[]), CAST(:b AS text[]), "
        "CAST(:criteria AS text[]), CAST(:scores AS float8[]), CAST(:maxes AS float8[])) "
        "AS src(user_ext, a_ext, b_ext, criterion, score, score_max)"
    )
    # xmax is 0 on a freshly inserted tuple and the locking transaction's id on an updated one.
    result = session.execute(
        text(
            _INSERT_HEAD
            + _JOINED_SOURCE.format(source=source)
            + _UPSERT_TAIL
            + _RETURNING_KEY
            + ", (comparisons.xmax = 0)"
        ),
        {
            "users": [r.user for r in batch],
            "a": [r.video_a for r in batch],
            "b": [r.video_b for r in batch],
            "criteria": [r.criterion for r in batch],
            "scores": [r.score for r in batch],
            "maxes": [r.score_max for r in batch],
            "now": now,
        },
    )
    return [((u, a, b, c), bool(inserted)) for u, a, b, c, inserted in result]


def _sqlite_source_param(batch: list[ComparisonRow]) -> str:
    return json.dumps(
        [[r.user, r.video_a, r.video_b, r.criterion, r.score, r.score_max] for r in batch]
    )


_SQLITE_SOURCE = """(
    SELECT value->>0 AS user_ext, value->>1 AS a_ext, value->>2 AS b_ext,
           value->>3 AS criterion, value->>4 AS score, value->>5 AS score_max
    FROM json_each(:rows)
) AS src"""


def _existing_keys_sqlite(session: Session, batch: list[ComparisonRow]) -> set[ComparisonKey]:
    # Exact because SQLite transactions here begin IMMEDIATE: no other writer runs in between.
    result = session.execute(
        text(
            f"""SELECT src.user_ext, src.a_ext, src.b_ext, src.criterion FROM {_SQLITE_SOURCE}
            JOIN users u ON u.external_id = src.user_ext
            JOIN videos va ON va.external_id = src.a_ext
            JOIN videos vb ON vb.external_id = src.b_ext
            JOIN criteria c ON c.name = src.criterion
            JOIN comparisons cmp ON cmp.user_id = u.id AND cmp.video_a_id = va.id
                AND cmp.video_b_id = vb.id AND cmp.criterion_id = c.id"""
        ),
        {"rows": _sqlite_source_param(batch)},
    )
    return {(u, a, b, c) for u, a, b, c in result}


def _upsert_sqlite(
    session: Session, batch: list[ComparisonRow], now: datetime
) -> list[ComparisonKey]:
    result = session.execute(
        text(
            _INSERT_HEAD
            + _JOINED_SOURCE.format(source=_SQLITE_SOURCE)
            + _UPSERT_TAIL
            + _RETURNING_KEY
        ),
        {"rows": _sqlite_source_param(batch), "now": now},
    )
    return [(u, a, b, c) for u, a, b, c in result]
