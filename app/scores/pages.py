"""Pages of global scores: rankings cached per run, published pointers re-read in the background."""

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Engine, text
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import read_only
from app.core.errors import Conflict, Gone, NotFound
from app.runs.recovery import is_superseded
from app.scores.schemas import GlobalScorePublic, ScorePage

logger = logging.getLogger(__name__)

MAIN_CRITERION_FALLBACK = "largely_recommended"
K = TypeVar("K")
V = TypeVar("V")


def display_score(score: float) -> float:
    """Tournesol's readable scale: 100·x/sqrt(1+x²), in (-100, 100)."""
    return 100.0 * score / math.sqrt(1.0 + score * score)


def global_score_item(
    video: str, criterion: str, run_id: int, score: float, uncertainty: float, n: int, users: int
) -> GlobalScorePublic:
    """One video's global score as served, with its display score beside the raw one."""
    return GlobalScorePublic(
        video_id=video,
        criterion=criterion,
        score=score,
        display_score=display_score(score),
        uncertainty=uncertainty,
        n_comparisons=n,
        n_contributors=users,
        run_id=run_id,
    )


class BoundedCache(Generic[K, V]):
    """A dict that forgets everything when full; for values that never go stale."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values: dict[K, V] = {}

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        value = self.values.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        if len(self.values) >= self.capacity:
            self.values.clear()
        self.values[key] = value


Ranking = list[tuple[str, float, float, int, int]]

# Criteria are only ever added, and a run's scores never change once written: both can be
# remembered per process. Which run is published is re-read after a short time to live.
_CRITERIA: BoundedCache[tuple[str, str], tuple[int, bool]] = BoundedCache(1024)
# A few whole rankings (a run's scores sorted once), from which every page is sliced.
_RANKINGS: BoundedCache[tuple[str, int, int, int], Ranking] = BoundedCache(8)
_PAGES: BoundedCache[tuple[Any, ...], bytes] = BoundedCache(4096)
_MAIN: BoundedCache[str, str] = BoundedCache(64)
# (database, criterion id) -> (monotonic time the pointer was read, published run id).
_POINTERS: dict[tuple[str, int], tuple[float, int | None]] = {}
# The engine each database key was last read through, for the background re-reads.
_ENGINES: dict[str, Engine] = {}
_REFRESHING: set[tuple[str, int]] = set()
_REFRESHING_LOCK = threading.Lock()


def _database_key(session: Session) -> str:
    return str(session.get_bind().engine.url)


def main_criterion(session: Session) -> str:
    def lookup() -> str:
        name = session.execute(
            text("SELECT name FROM criteria WHERE is_main ORDER BY id LIMIT 1")
        ).scalar()
        return str(name) if name is not None else MAIN_CRITERION_FALLBACK

    return _MAIN.get_or_compute(_database_key(session), lookup)


def criterion_id(session: Session, criterion: str) -> int:
    def lookup() -> tuple[int, bool]:
        found = session.execute(
            text("SELECT id FROM criteria WHERE name = :name"), {"name": criterion}
        ).scalar()
        if found is None:
            raise NotFound(f"Unknown criterion {criterion!r}.")
        return int(found), True

    return _CRITERIA.get_or_compute((_database_key(session), criterion), lookup)[0]


def _read_pointer(session: Session, criterion: int) -> int | None:
    found = session.execute(
        text("SELECT run_id FROM published_runs WHERE criterion_id = :criterion"),
        {"criterion": criterion},
    ).scalar()
    return None if found is None else int(found)


def _published_run(session: Session, criterion: int) -> int | None:
    """The criterion's published run, re-read when older than SCORES_POINTER_TTL_SECONDS."""
    database = _database_key(session)
    key = (database, criterion)
    now = time.monotonic()
    remembered = _POINTERS.get(key)
    if remembered is not None and now - remembered[0] < get_settings().scores_pointer_ttl_seconds:
        return remembered[1]
    run_id = _read_pointer(session, criterion)
    _POINTERS[key] = (now, run_id)
    _ENGINES[database] = session.get_bind().engine
    return run_id


def _check_readable_run(session: Session, run_id: int) -> None:
    row = session.execute(
        text(
            "SELECT status, EXISTS (SELECT 1 FROM global_scores g WHERE g.run_id = r.id)"
            " FROM training_runs r WHERE r.id = :id"
        ),
        {"id": run_id},
    ).first()
    if row is None:
        raise NotFound(f"No training run {run_id}.")
    if row[0] != "succeeded":
        raise Conflict(f"Run {run_id} is {row[0]}; only succeeded runs have scores.")
    # A superseded run is gone once pruning may have started on it, not only once it is done.
    if not row[1] or is_superseded(
        session.connection(), run_id, runs_kept=get_settings().score_runs_kept
    ):
        raise Gone(f"The scores of run {run_id} were deleted (superseded runs are pruned).")


def _load_ranking(session: Session, run_id: int, criterion: int, min_contributors: int) -> Ranking:
    """Every video of the run, best first (video id breaks ties, in the same direction)."""
    rows = session.execute(
        text(
            "SELECT v.external_id, g.score, g.uncertainty, g.n_comparisons, g.n_contributors"
            " FROM global_scores g JOIN videos v ON v.id = g.video_id"
            " WHERE g.run_id = :run AND g.criterion_id = :criterion"
            " AND g.n_contributors >= :min ORDER BY g.score DESC, g.video_id DESC"
        ),
        {"run": run_id, "criterion": criterion, "min": min_contributors},
    ).all()
    return [tuple(row) for row in rows]


def _ranking(session: Session, run_id: int, criterion: int, min_contributors: int) -> Ranking:
    # One query per run and filter, then every page is a slice: a cold page costs no query.
    return _RANKINGS.get_or_compute(
        (_database_key(session), run_id, criterion, min_contributors),
        lambda: _load_ranking(session, run_id, criterion, min_contributors),
    )


def _render(
    ranking: Ranking, *, name: str, run_id: int, order: str, limit: int, offset: int
) -> bytes:
    ordered = ranking if order == "desc" else ranking[::-1]
    items = [
        global_score_item(video, name, run_id, score, uncertainty, n, users)
        for video, score, uncertainty, n, users in ordered[offset : offset + limit]
    ]
    page = ScorePage(
        items=items, total=len(ranking), limit=limit, offset=offset, criterion=name, run_id=run_id
    )
    return page.model_dump_json().encode()


def global_scores(
    session: Session,
    *,
    criterion: str | None,
    order: Literal["asc", "desc"],
    limit: int,
    offset: int,
    min_contributors: int,
    run_id: int | None,
) -> bytes:
    """A page of global scores as ScorePage JSON, every item from the same run (the published
    one by default). Pages of a run are rendered once per process: its scores never change."""
    name = criterion or main_criterion(session)
    criterion_pk = criterion_id(session, name)
    if run_id is not None:
        _check_readable_run(session, run_id)
        chosen: int | None = run_id
    else:
        chosen = _published_run(session, criterion_pk)
    if chosen is None:
        nothing = ScorePage(
            items=[], total=0, limit=limit, offset=offset, criterion=name, run_id=None
        )
        return nothing.model_dump_json().encode()
    key = (_database_key(session), chosen, criterion_pk, order, limit, offset, min_contributors)

    def render() -> bytes:
        ranking = _ranking(session, chosen, criterion_pk, min_contributors)
        return _render(ranking, name=name, run_id=chosen, order=order, limit=limit, offset=offset)

    return _PAGES.get_or_compute(key, render)


def cached_global_scores(
    *,
    database: str,
    criterion: str | None,
    order: Literal["asc", "desc"],
    limit: int,
    offset: int,
    min_contributors: int,
) -> bytes | None:
    """The published run's page if this process can answer it from memory, else None.

    Touches neither the database nor a thread: the event loop answers these itself, and only a
    miss goes to `global_scores` in the threadpool. A pointer past its time to live is still
    served for one more time to live while a background thread re-reads it: re-reading it on
    the request path sent every request of that moment to the threadpool at once, where threads
    contending for the GIL with the event loop made a tail of 0.1 to 0.9 s.
    """
    name = criterion or _MAIN.values.get(database)
    if name is None:
        return None
    known = _CRITERIA.values.get((database, name))
    if known is None:
        return None
    criterion_pk = known[0]
    remembered = _POINTERS.get((database, criterion_pk))
    if remembered is None:
        return None
    read_at, run_id = remembered
    if run_id is None:
        return None
    age = time.monotonic() - read_at
    ttl = get_settings().scores_pointer_ttl_seconds
    if age >= ttl:
        if age >= 2 * ttl:
            return None  # too old to serve (an idle process): re-read before answering
        _refresh_in_background(database, criterion_pk)
    key = (database, run_id, criterion_pk, order, limit, offset, min_contributors)
    page = _PAGES.values.get(key)
    if page is None:
        ranking = _RANKINGS.values.get((database, run_id, criterion_pk, min_contributors))
        if ranking is None:
            return None
        page = _render(ranking, name=name, run_id=run_id, order=order, limit=limit, offset=offset)
        _PAGES.put(key, page)
    return page


def _refresh_in_background(database: str, criterion: int) -> None:
    """Start one re-read of the pointer (at most one per pointer at a time)."""
    key = (database, criterion)
    with _REFRESHING_LOCK:
        if key in _REFRESHING:
            return
        _REFRESHING.add(key)
    threading.Thread(
        target=_refresh_pointer, args=(key,), name="scores-pointer", daemon=True
    ).start()


def _refresh_pointer(key: tuple[str, int]) -> None:
    """Re-read a published pointer; when it moved, load the new run's rankings before switching
    to it, so that the first readers of the new run are answered from memory too."""
    database, criterion = key
    try:
        engine = _ENGINES.get(database)
        if engine is None:
            return
        read_at = time.monotonic()
        with Session(read_only(engine)) as session:  # a reader never waits for writers
            run_id = _read_pointer(session, criterion)
            previous = _POINTERS.get(key)
            if run_id is not None and previous is not None and previous[1] != run_id:
                filters = [
                    min_contributors
                    for (db, run, crit, min_contributors) in list(_RANKINGS.values)
                    if (db, run, crit) == (database, previous[1], criterion)
                ]
                for min_contributors in filters or [0]:
                    _ranking(session, run_id, criterion, min_contributors)
        _POINTERS[key] = (read_at, run_id)
    except Exception:
        # The pointer keeps aging: past twice its time to live, requests re-read it themselves
        # and meet the same error on their own path.
        logger.exception("Re-reading the published run of criterion %s failed", criterion)
    finally:
        with _REFRESHING_LOCK:
            _REFRESHING.discard(key)
