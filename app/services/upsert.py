"""One-statement upsert of many comparisons, on PostgreSQL and on SQLite.

Rows are first normalised (pair sorted by external id, sign flipped when swapped, later duplicates
win), then the missing users and videos are inserted, their ids read back, and all comparisons are
written by a single `INSERT … SELECT … ON CONFLICT DO UPDATE` whose source is the batch passed as
integer ids, one array literal per column on PostgreSQL (`unnest`) or one JSON document on SQLite
(`json_each`): a handful of parameters instead of thousands, and no joins in the hot statement.
Unchanged rows are not touched, so `updated_at` only moves when a score really changes.
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


class UnknownCriteria(LookupError):
    """The batch names criteria that do not exist; nothing was written."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"unknown criteria: {', '.join(names)}")
        self.names = names


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
    postgres = session.get_bind().dialect.name == "postgresql"
    wanted = {
        "criteria": sorted({r.criterion for r in batch}),
        "users": sorted({r.user for r in batch}),
        "videos": sorted({r.video_a for r in batch} | {r.video_b for r in batch}),
    }
    found = _lookup(session, postgres, wanted)
    criteria = found["criteria"]
    unknown = [name for name in wanted["criteria"] if name not in criteria]
    if unknown:
        raise UnknownCriteria(unknown)
    users = _insert_missing(session, postgres, "users", wanted["users"], found["users"], now)
    videos = _insert_missing(session, postgres, "videos", wanted["videos"], found["videos"], now)
    ids = [
        (users[r.user], videos[r.video_a], videos[r.video_b], criteria[r.criterion]) for r in batch
    ]
    names = _Names(users, videos, criteria)
    if postgres:
        # Columns as array literals: PostgreSQL parses them far faster than JSON, and building
        # one is a single C-level join instead of a parameter adaptation per element.
        columns = dict(
            zip("uabc", (_array(column) for column in zip(*ids, strict=True)), strict=True)
        )
        columns["s"] = _array(r.score for r in batch)
        columns["m"] = _array(r.score_max for r in batch)
        # xmax is 0 on a freshly inserted tuple and the locking transaction's id on an updated one.
        result = session.execute(
            text(_UPSERT.format(source=_PG_SOURCE, extra=", (xmax = 0)")), {**columns, "now": now}
        )
        for user_id, a_id, b_id, criterion_id, inserted in result:
            outcome.statuses[names.key(user_id, a_id, b_id, criterion_id)] = (
                "created" if inserted else "updated"
            )
    else:
        source = json.dumps(
            [(*key, r.score, r.score_max) for key, r in zip(ids, batch, strict=True)]
        )
        # Exact because SQLite transactions here begin IMMEDIATE: no other writer runs in between.
        existing = {
            names.key(*found) for found in session.execute(text(_SQLITE_EXISTING), {"rows": source})
        }
        result = session.execute(
            text(_UPSERT.format(source=_SQLITE_SOURCE, extra="")), {"rows": source, "now": now}
        )
        for returned in result:
            key = names.key(*returned)
            outcome.statuses[key] = "updated" if key in existing else "created"
    for row in batch:
        outcome.statuses.setdefault(row.key, "unchanged")
    return outcome


def _array(values: Iterable[float]) -> str:
    return "{" + ",".join(map(repr, values)) + "}"


class _Names:
    """Maps database ids back to external names to key the outcome."""

    def __init__(
        self, users: dict[str, int], videos: dict[str, int], criteria: dict[str, int]
    ) -> None:
        self.users = {v: k for k, v in users.items()}
        self.videos = {v: k for k, v in videos.items()}
        self.criteria = {v: k for k, v in criteria.items()}

    def key(self, user_id: int, a_id: int, b_id: int, criterion_id: int) -> ComparisonKey:
        return (
            self.users[user_id],
            self.videos[a_id],
            self.videos[b_id],
            self.criteria[criterion_id],
        )


def _names_source(postgres: bool, parameter: str) -> str:
    if postgres:
        return f"(SELECT jsonb_array_elements_text(CAST(:{parameter} AS jsonb)))"
    return f"(SELECT value FROM json_each(:{parameter}))"


_NAMES_TABLE = {
    True: "jsonb_array_elements_text(CAST(:names AS jsonb)) AS src(name)",
    False: "(SELECT value AS name FROM json_each(:names)) AS src",
}
_NAME_COLUMN = {"criteria": "name", "users": "external_id", "videos": "external_id"}


def _lookup(
    session: Session, postgres: bool, wanted: dict[str, list[str]]
) -> dict[str, dict[str, int]]:
    """Ids of the wanted names, per table, in one round trip."""
    selects = [
        f"SELECT '{table}', {_NAME_COLUMN[table]}, id FROM {table} "
        f"WHERE {_NAME_COLUMN[table]} IN {_names_source(postgres, table)}"
        for table in wanted
    ]
    result = session.execute(
        text(" UNION ALL ".join(selects)),
        {table: json.dumps(names) for table, names in wanted.items()},
    )
    found: dict[str, dict[str, int]] = {table: {} for table in wanted}
    for table, name, pk in result:
        found[table][name] = int(pk)
    return found


def _insert_missing(
    session: Session,
    postgres: bool,
    table: str,
    wanted: list[str],
    found: dict[str, int],
    now: datetime,
) -> dict[str, int]:
    """Complete `found` (ids of the existing names) by inserting the missing names of `wanted`."""
    missing = [name for name in wanted if name not in found]
    if not missing:
        return found
    session.execute(
        text(
            f"INSERT INTO {table} (external_id, created_at) "
            f"SELECT src.name, :now FROM {_NAMES_TABLE[postgres]} "
            "WHERE true ON CONFLICT (external_id) DO NOTHING"
        ),
        {"names": json.dumps(missing), "now": now},
    )
    # A separate statement: under READ COMMITTED it takes a fresh snapshot, so it also sees rows a
    # concurrent transaction committed while our INSERT waited on them.
    return found | _lookup(session, postgres, {table: missing})[table]


_UPSERT = """
    INSERT INTO comparisons
        (user_id, video_a_id, video_b_id, criterion_id, score, score_max, created_at, updated_at)
    SELECT src.u, src.a, src.b, src.c, src.s, src.m, :now, :now FROM {source} WHERE true
    ON CONFLICT (user_id, video_a_id, video_b_id, criterion_id) DO UPDATE
    SET score = excluded.score, score_max = excluded.score_max, updated_at = excluded.updated_at
    WHERE comparisons.score <> excluded.score OR comparisons.score_max <> excluded.score_max
    RETURNING user_id, video_a_id, video_b_id, criterion_id{extra}
"""

_PG_SOURCE = """unnest(
    CAST(:u AS int[]), CAST(:a AS int[]), CAST(:b AS int[]), CAST(:c AS int[]),
    CAST(:s AS float8[]), CAST(:m AS float8[])
) AS src(u, a, b, c, s, m)"""

_SQLITE_SOURCE = """(
    SELECT value->>0 AS u, value->>1 AS a, value->>2 AS b, value->>3 AS c,
           value->>4 AS s, value->>5 AS m
    FROM json_each(:rows)
) AS src"""

_SQLITE_EXISTING = f"""
    SELECT cmp.user_id, cmp.video_a_id, cmp.video_b_id, cmp.criterion_id FROM {_SQLITE_SOURCE}
    JOIN comparisons cmp ON cmp.user_id = src.u AND cmp.video_a_id = src.a
        AND cmp.video_b_id = src.b AND cmp.criterion_id = src.c
"""
