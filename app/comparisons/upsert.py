"""One-statement upsert of many comparisons, on PostgreSQL and on SQLite.

Rows are first normalised (pair sorted by external id, sign flipped when swapped, later duplicates
win). On PostgreSQL a single statement then looks up users, videos and criteria, inserts the
missing users and videos, writes every comparison with `INSERT … ON CONFLICT DO UPDATE` and counts
what it did: one round trip, the batch passed as one array literal per column (`unnest`), and
nothing but the counts sent back. On SQLite the missing users and videos are inserted first and
the comparisons written by one statement reading the batch as a JSON document (`json_each`).
Unchanged rows are not touched, so `updated_at` only moves when a score really changes.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Literal, NamedTuple

from sqlalchemy import DateTime, TextClause, text
from sqlmodel import Session

from app.core.columns import utcnow
from app.core.db import CUSTOM_PLANS_ONLY

Status = Literal["created", "updated", "unchanged"]
ComparisonKey = tuple[str, str, str, str]  # user, video_a, video_b (sorted), criterion


class ComparisonRow(NamedTuple):
    """A validated comparison in stored orientation (video_a < video_b).

    A named tuple: ingest makes one per row, and it is built three times faster than a frozen
    dataclass."""

    user: str
    video_a: str
    video_b: str
    criterion: str
    score: float
    score_max: float
    # When the source says when the comparison was first made (the public dataset's
    # `week_date`): the created_at of a row this write inserts. None means now.
    created_at: datetime | None = None

    @property
    def key(self) -> ComparisonKey:
        return (self.user, self.video_a, self.video_b, self.criterion)


def oriented(
    user: str,
    video_a: str,
    video_b: str,
    criterion: str,
    score: float,
    score_max: float,
    created_at: datetime | None = None,
) -> ComparisonRow:
    """The stored form of a comparison: the pair sorted, the score's sign following the swap."""
    if video_a > video_b:
        video_a, video_b, score = video_b, video_a, -score
    return ComparisonRow(
        user, video_a, video_b, criterion, float(score) + 0.0, float(score_max), created_at
    )


class UnknownCriteria(LookupError):
    """The batch names criteria that do not exist; nothing was written."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"unknown criteria: {', '.join(names)}")
        self.names = names


class AutoRunsNotQueued(Exception):
    """An auto run is not queued for every criterion of the batch; nothing was written."""


@dataclass
class UpsertOutcome:
    """How many distinct comparisons were created, updated and left unchanged; per key only when
    `upsert_comparisons` was asked for statuses."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    statuses: dict[ComparisonKey, Status] = field(default_factory=dict)


def deduplicate(rows: Iterable[ComparisonRow]) -> list[ComparisonRow]:
    """Keep the last row per key (a re-submission replaces), in key order to avoid deadlocks."""
    latest: dict[ComparisonKey, ComparisonRow] = {}
    for row in rows:
        latest[row.key] = row
    return [latest[k] for k in sorted(latest)]


def upsert_comparisons(
    session: Session, *, rows: Sequence[ComparisonRow], statuses: bool = False
) -> UpsertOutcome:
    """Write `rows` (criteria must exist) and count the comparisons created, updated and left
    unchanged; with `statuses`, also say which, per key."""
    batch = deduplicate(rows)
    if not batch:
        return UpsertOutcome()
    wanted = _wanted(batch)
    if session.get_bind().dialect.name == "postgresql":
        outcome = _upsert_postgres(session, batch, wanted, utcnow(), statuses)
    else:
        outcome = _upsert_sqlite(session, batch, wanted, utcnow())
    return _completed(outcome, batch, statuses)


def upsert_if_auto_runs_queued(
    session: Session, *, rows: Sequence[ComparisonRow]
) -> UpsertOutcome | None:
    """PostgreSQL only: `upsert_comparisons(..., statuses=True)`, in the same single statement as
    the check that an auto run is already queued for every criterion of `rows`; None, with
    nothing written, when one is not.

    When one is queued for each, that run picks the change up and `comparisons_changed` has
    nothing to do, so a caller in autocommit mode needs no other statement: the write is its own
    transaction, committed by the one round trip. Otherwise the caller writes again the usual way,
    in a transaction that also schedules the missing runs."""
    batch = deduplicate(rows)
    if not batch:
        return UpsertOutcome()
    try:
        outcome = _upsert_postgres(session, batch, _wanted(batch), utcnow(), True, if_queued=True)
    except AutoRunsNotQueued:
        return None
    return _completed(outcome, batch, True)


def _wanted(batch: list[ComparisonRow]) -> dict[str, list[str]]:
    return {
        "criteria": sorted({r.criterion for r in batch}),
        "users": sorted({r.user for r in batch}),
        "videos": sorted({r.video_a for r in batch} | {r.video_b for r in batch}),
    }


def _completed(outcome: UpsertOutcome, batch: list[ComparisonRow], statuses: bool) -> UpsertOutcome:
    outcome.unchanged = len(batch) - outcome.inserted - outcome.updated
    if statuses:
        for row in batch:
            outcome.statuses.setdefault(row.key, "unchanged")
    else:
        outcome.statuses.clear()
    return outcome


def _upsert_postgres(
    session: Session,
    batch: list[ComparisonRow],
    wanted: dict[str, list[str]],
    now: datetime,
    statuses: bool,
    *,
    if_queued: bool = False,
) -> UpsertOutcome:
    # Each row refers to its names by position (1-based) in the sorted lists of distinct names;
    # the statement resolves each list to an array of ids in the same order.
    users, videos, criteria = (
        {name: i for i, name in enumerate(wanted[table], 1)}
        for table in ("users", "videos", "criteria")
    )
    parameters: dict[str, Any] = {name: _text_array(names) for name, names in wanted.items()}
    parameters["u"] = _number_array(users[r.user] for r in batch)
    parameters["a"] = _number_array(videos[r.video_a] for r in batch)
    parameters["b"] = _number_array(videos[r.video_b] for r in batch)
    parameters["c"] = _number_array(criteria[r.criterion] for r in batch)
    parameters["s"] = _number_array(r.score for r in batch)
    parameters["m"] = _number_array(r.score_max for r in batch)
    parameters["now"] = now
    dated = not if_queued and any(r.created_at is not None for r in batch)
    if dated:
        parameters["t"] = _timestamp_array(r.created_at for r in batch)
    # Never run on a cached generic plan: one is made once per connection, from the table sizes of
    # that moment (a plan made on an empty database scans users sequentially forever after, 15 ms
    # a write at 90k users, when autovacuum is off), and it would also serve 10,000-row batches.
    # Planning each call costs about 0.4 ms. Single writes (`statuses`) are prepared all the same
    # on connections that only ever make custom plans (`plan_cache_mode`, set by
    # app.core.db.make_engine): that spares parsing and rewriting this long statement each time
    # (0.35 of the 1.0 ms of database CPU it costs at 1.4M rows) and still plans it per call.
    # Bulk batches are not: their parsing is nothing beside their rows. Hence the driver
    # connection, which takes `prepare`; it runs in the session's transaction all the same.
    fairy = session.connection().connection
    connection: Any = fairy.driver_connection
    statement = _PG_UPSERT_IF_QUEUED if if_queued else _PG_UPSERT_DATED if dated else _PG_UPSERT
    prepare = statuses and bool(fairy.info.get(CUSTOM_PLANS_ONLY))
    found, queued, resolved, inserted, updated, *ids = connection.execute(
        statement + (_PG_STATUSES if statuses else _PG_COUNTS), parameters, prepare=prepare
    ).fetchone()
    unknown = [name for name in wanted["criteria"] if name not in (found or ())]
    if unknown:
        raise UnknownCriteria(unknown)
    if not queued:  # only the if_queued statement checks; nothing was written
        raise AutoRunsNotQueued
    if not resolved:  # cannot happen (users and videos are never deleted); nothing was written
        raise RuntimeError("the batch's users and videos did not all resolve to one id each")
    outcome = UpsertOutcome(inserted=int(inserted), updated=int(updated))
    if statuses:
        user_ids, video_ids, criterion_ids, created, changed = ids
        written: dict[tuple[int, ...], Status] = {tuple(key): "created" for key in created or ()}
        written |= {tuple(key): "updated" for key in changed or ()}
        for r in batch:
            key = (
                user_ids[users[r.user] - 1],
                video_ids[videos[r.video_a] - 1],
                video_ids[videos[r.video_b] - 1],
                criterion_ids[criteria[r.criterion] - 1],
            )
            outcome.statuses[r.key] = written.get(key, "unchanged")
    return outcome


def _text_array(values: Iterable[str]) -> str:
    # Every element quoted, so that a name such as NULL stays a name; validated names hold no
    # quote or backslash, anything else is escaped.
    items = list(values)
    joined = '","'.join(items)
    if "\\" in joined or joined.count('"') != 2 * (len(items) - 1):
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in items)
    return '{"' + joined + '"}' if items else "{}"


def _number_array(values: Iterable[float]) -> str:
    return "{" + ",".join(map(repr, values)) + "}"


def _timestamp_array(values: Iterable[datetime | None]) -> str:
    return "{" + ",".join("NULL" if v is None else f'"{v.isoformat()}"' for v in values) + "}"


# Ids are gathered in the order of the name lists (sorted by code point, as COLLATE "C" sorts), so
# a row's positions pick its ids out of the arrays: no join on names. Names the statement's snapshot
# does not see are inserted with a no-op DO UPDATE, so that a name a concurrent transaction
# committed meanwhile still hands back its id. Nothing is written when a criterion is unknown.
# xmax is 0 on a freshly inserted tuple and the locking transaction's id on an updated one. Rows
# are written in the batch's (key) order, so concurrent writers take their locks in one order.
def _ids_by_name(table: str, ids: str) -> str:
    """CTEs giving `ids`, the table's ids of the %(table)s names in code-point order: the names
    found, plus the missing ones inserted (only once every criterion is known)."""
    return f"""found_{table} AS (
    SELECT external_id AS name, id FROM {table}
    WHERE external_id = ANY(CAST(%({table})s AS text[]))
), new_{table} AS (
    INSERT INTO {table} (external_id, created_at)
    SELECT w.name, %(now)s FROM unnest(CAST(%({table})s AS text[])) WITH ORDINALITY AS w(name, n)
    WHERE (SELECT known FROM crit) AND w.name NOT IN (SELECT name FROM found_{table})
    ORDER BY w.n
    ON CONFLICT (external_id) DO UPDATE SET external_id = excluded.external_id
    RETURNING external_id AS name, id
), {ids} AS (
    SELECT array_agg(id ORDER BY name COLLATE "C") AS ids FROM (
        SELECT name, id FROM found_{table} UNION ALL SELECT name, id FROM new_{table}
    ) AS named
)"""


_PG_UPSERT_TEMPLATE = """
WITH {queued}crit AS (
    SELECT array_agg(name ORDER BY name COLLATE "C") AS names,
        array_agg(id ORDER BY name COLLATE "C") AS ids,
        count(*) = cardinality(CAST(%(criteria)s AS text[])){and_queued} AS known
    FROM criteria WHERE name = ANY(CAST(%(criteria)s AS text[]))
), {users}, {videos}, ready AS (
    SELECT crit.known
        AND cardinality(user_ids.ids) = cardinality(CAST(%(users)s AS text[]))
        AND cardinality(video_ids.ids) = cardinality(CAST(%(videos)s AS text[])) AS ok,
        crit.ids AS c, user_ids.ids AS u, video_ids.ids AS v
    FROM crit, user_ids, video_ids
), written AS (
    INSERT INTO comparisons
        (user_id, video_a_id, video_b_id, criterion_id, score, score_max, created_at, updated_at)
    SELECT ready.u[src.u], ready.v[src.a], ready.v[src.b], ready.c[src.c], src.s, src.m,
        %(now)s, %(now)s
    FROM ready, unnest(
        CAST(%(u)s AS int[]), CAST(%(a)s AS int[]), CAST(%(b)s AS int[]), CAST(%(c)s AS int[]),
        CAST(%(s)s AS float8[]), CAST(%(m)s AS float8[])
    ) AS src(u, a, b, c, s, m)
    WHERE ready.ok
    ON CONFLICT (user_id, video_a_id, video_b_id, criterion_id) DO UPDATE
    SET score = excluded.score, score_max = excluded.score_max, updated_at = excluded.updated_at
    WHERE comparisons.score <> excluded.score OR comparisons.score_max <> excluded.score_max
    RETURNING user_id, video_a_id, video_b_id, criterion_id, (xmax = 0) AS inserted
)
SELECT (SELECT names FROM crit), {queued_column}, (SELECT ok FROM ready),
    count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
""".replace("{users}", _ids_by_name("users", "user_ids")).replace(
    "{videos}", _ids_by_name("videos", "video_ids")
)

_PG_UPSERT = (
    _PG_UPSERT_TEMPLATE.replace("{queued}", "")
    .replace("{and_queued}", "")
    .replace("{queued_column}", "true")
)

# The check of `comparisons_changed` (app/runs/freshness.py), made by the statement itself:
# is an auto run queued for every criterion (the partial unique index allows at most one each)?
# When one is not, `known` is false, so nothing is written, users and videos included. It reads
# the statement's snapshot, taken when the statement starts instead of just after the write: a
# queued run a worker claims in between is the race the separate check already had (the run may
# read the comparisons before this write commits), only wider by the statement's own duration.
_PG_UPSERT_IF_QUEUED = (
    _PG_UPSERT_TEMPLATE.replace(
        "{queued}",
        """queued AS (
    SELECT count(*) = cardinality(CAST(%(criteria)s AS text[])) AS all_queued FROM training_runs
    WHERE scope = ANY(CAST(%(criteria)s AS text[])) AND status = 'queued' AND trigger = 'auto'
), """,
    )
    .replace("{and_queued}", " AND (SELECT all_queued FROM queued)")
    .replace("{queued_column}", "(SELECT all_queued FROM queued)")
)

# Rows that say when they were first made (an import's `week_date`) are inserted with that time.
_PG_UPSERT_DATED = _PG_UPSERT.replace(
    """src.s, src.m,
        %(now)s, %(now)s""",
    """src.s, src.m,
        COALESCE(src.t, %(now)s), %(now)s""",
).replace(
    """CAST(%(s)s AS float8[]), CAST(%(m)s AS float8[])
    ) AS src(u, a, b, c, s, m)""",
    """CAST(%(s)s AS float8[]), CAST(%(m)s AS float8[]),
        CAST(%(t)s AS timestamptz[])
    ) AS src(u, a, b, c, s, m, t)""",
)
assert _PG_UPSERT_DATED.count("src.t") == 1 and "AS src(u, a, b, c, s, m, t)" in _PG_UPSERT_DATED

_PG_COUNTS = "FROM written"

# Also the id arrays and the ids of the rows written, to tell each key's status.
_PG_STATUSES = """,
    (SELECT u FROM ready), (SELECT v FROM ready), (SELECT c FROM ready),
    array_agg(ARRAY[user_id, video_a_id, video_b_id, criterion_id]) FILTER (WHERE inserted),
    array_agg(ARRAY[user_id, video_a_id, video_b_id, criterion_id]) FILTER (WHERE NOT inserted)
FROM written
"""


def _upsert_sqlite(
    session: Session, batch: list[ComparisonRow], wanted: dict[str, list[str]], now: datetime
) -> UpsertOutcome:
    found = _lookup(session, wanted)
    criteria = found["criteria"]
    unknown = [name for name in wanted["criteria"] if name not in criteria]
    if unknown:
        raise UnknownCriteria(unknown)
    # Users this write creates have no comparison yet: a batch made only of such users needs no
    # look-up of the rows it replaces (a single write from a new user, the commonest kind).
    all_users_new = not found["users"]
    users = _insert_missing(session, "users", wanted["users"], found["users"], now)
    videos = _insert_missing(session, "videos", wanted["videos"], found["videos"], now)
    names = _Names(users, videos, criteria)
    # Stored as the `now` parameter below is (the column type's own text), so both read back alike.
    dialect = session.get_bind().dialect
    process = DateTime().dialect_impl(dialect).bind_processor(dialect)

    def stored_time(moment: datetime) -> Any:
        return process(moment) if process else moment

    source = json.dumps(
        [
            [
                users[r.user],
                videos[r.video_a],
                videos[r.video_b],
                criteria[r.criterion],
                r.score,
                r.score_max,
                None if r.created_at is None else stored_time(r.created_at),
            ]
            for r in batch
        ]
    )
    # Exact because SQLite transactions here begin IMMEDIATE: no other writer runs in between.
    existing = (
        set()
        if all_users_new
        else {names.key(*found) for found in session.execute(_SQLITE_EXISTING, {"rows": source})}
    )
    result = session.execute(_SQLITE_UPSERT, {"rows": source, "now": now})
    outcome = UpsertOutcome()
    for returned in result:
        key = names.key(*returned)
        outcome.statuses[key] = "updated" if key in existing else "created"
    outcome.updated = sum(1 for key in outcome.statuses if key in existing)
    outcome.inserted = len(outcome.statuses) - outcome.updated
    return outcome


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


_NAME_COLUMN = {"criteria": "name", "users": "external_id", "videos": "external_id"}


@cache
def _lookup_statement(tables: tuple[str, ...]) -> TextClause:
    # Built once per set of tables: making a `text()` parses its SQL for parameters each time.
    selects = [
        f"SELECT '{table}', {_NAME_COLUMN[table]}, id FROM {table} "
        f"WHERE {_NAME_COLUMN[table]} IN (SELECT value FROM json_each(:{table}))"
        for table in tables
    ]
    return text(" UNION ALL ".join(selects))


@cache
def _insert_statement(table: str) -> TextClause:
    return text(
        f"INSERT INTO {table} (external_id, created_at) "
        "SELECT value, :now FROM json_each(:names) WHERE true "
        "ON CONFLICT (external_id) DO NOTHING RETURNING external_id, id"
    )


def _lookup(session: Session, wanted: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Ids of the wanted names, per table, in one round trip."""
    result = session.execute(
        _lookup_statement(tuple(wanted)),
        {table: json.dumps(names) for table, names in wanted.items()},
    )
    found: dict[str, dict[str, int]] = {table: {} for table in wanted}
    for table, name, pk in result:
        found[table][name] = int(pk)
    return found


def _insert_missing(
    session: Session, table: str, wanted: list[str], found: dict[str, int], now: datetime
) -> dict[str, int]:
    """Complete `found` (ids of the existing names) by inserting the missing names of `wanted`.

    The insert returns the ids it makes, so no second look-up follows; a name it skipped (only a
    writer outside an IMMEDIATE transaction could have inserted it meanwhile) is looked up."""
    missing = [name for name in wanted if name not in found]
    if not missing:
        return found
    inserted = session.execute(_insert_statement(table), {"names": json.dumps(missing), "now": now})
    made = {name: int(pk) for name, pk in inserted}
    skipped = [name for name in missing if name not in made]
    if skipped:
        made |= _lookup(session, {table: skipped})[table]
    return found | made


_SQLITE_SOURCE = """(
    SELECT value->>0 AS u, value->>1 AS a, value->>2 AS b, value->>3 AS c,
           value->>4 AS s, value->>5 AS m, value->>6 AS t
    FROM json_each(:rows)
) AS src"""

_SQLITE_UPSERT = text(f"""
    INSERT INTO comparisons
        (user_id, video_a_id, video_b_id, criterion_id, score, score_max, created_at, updated_at)
    SELECT src.u, src.a, src.b, src.c, src.s, src.m, COALESCE(src.t, :now), :now
    FROM {_SQLITE_SOURCE} WHERE true
    ON CONFLICT (user_id, video_a_id, video_b_id, criterion_id) DO UPDATE
    SET score = excluded.score, score_max = excluded.score_max, updated_at = excluded.updated_at
    WHERE comparisons.score <> excluded.score OR comparisons.score_max <> excluded.score_max
    RETURNING user_id, video_a_id, video_b_id, criterion_id
""")

_SQLITE_EXISTING = text(f"""
    SELECT cmp.user_id, cmp.video_a_id, cmp.video_b_id, cmp.criterion_id FROM {_SQLITE_SOURCE}
    JOIN comparisons cmp ON cmp.user_id = src.u AND cmp.video_a_id = src.a
        AND cmp.video_b_id = src.b AND cmp.criterion_id = src.c
""")
