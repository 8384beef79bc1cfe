"""Reading scores: the published run's global scores, a video's, a user's; any succeeded run's."""

import math
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import text
from sqlmodel import Session

from app.core.config import get_settings
from app.core.errors import Conflict, Gone, NotFound
from app.schemas.scores import (
    GlobalScorePublic,
    LocalScorePublic,
    ScorePage,
    UserScores,
    VideoScores,
)

MAIN_CRITERION_FALLBACK = "largely_recommended"
K = TypeVar("K")
V = TypeVar("V")


def display_score(score: float) -> float:
    """Tournesol's readable scale: 100·x/sqrt(1+x²), in (-100, 100)."""
    return 100.0 * score / math.sqrt(1.0 + score * score)


class BoundedCache(Generic[K, V]):
    """A dict that forgets everything when full; for values that never go stale."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values: dict[K, V] = {}

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        value = self.values.get(key)
        if value is None:
            value = compute()
            if len(self.values) >= self.capacity:
                self.values.clear()
            self.values[key] = value
        return value


# Criteria are only ever added, and a run's scores never change once written: both can be
# remembered per process. Which run is published is re-read after a short time to live.
_CRITERIA: BoundedCache[tuple[str, str], tuple[int, bool]] = BoundedCache(1024)
# A few whole rankings (a run's scores sorted once), from which every page is sliced.
_RANKINGS: BoundedCache[tuple[str, int, int, int], "Ranking"] = BoundedCache(8)
_PAGES: BoundedCache[tuple[Any, ...], bytes] = BoundedCache(4096)
_MAIN: BoundedCache[str, str] = BoundedCache(64)
_POINTERS: dict[tuple[str, int], tuple[float, int | None]] = {}


def _database_key(session: Session) -> str:
    return str(session.get_bind().engine.url)


def _main_criterion(session: Session) -> str:
    def lookup() -> str:
        name = session.execute(
            text("SELECT name FROM criteria WHERE is_main ORDER BY id LIMIT 1")
        ).scalar()
        return str(name) if name is not None else MAIN_CRITERION_FALLBACK

    return _MAIN.get_or_compute(_database_key(session), lookup)


def _criterion_id(session: Session, criterion: str) -> int:
    def lookup() -> tuple[int, bool]:
        found = session.execute(
            text("SELECT id FROM criteria WHERE name = :name"), {"name": criterion}
        ).scalar()
        if found is None:
            raise NotFound(f"Unknown criterion {criterion!r}.")
        return int(found), True

    return _CRITERIA.get_or_compute((_database_key(session), criterion), lookup)[0]


def _published_run(session: Session, criterion_id: int) -> int | None:
    """The criterion's published run, re-read at most every SCORES_POINTER_TTL_SECONDS."""
    key = (_database_key(session), criterion_id)
    now = time.monotonic()
    remembered = _POINTERS.get(key)
    if remembered is not None and remembered[0] > now:
        return remembered[1]
    found = session.execute(
        text("SELECT run_id FROM published_runs WHERE criterion_id = :criterion"),
        {"criterion": criterion_id},
    ).scalar()
    run_id = None if found is None else int(found)
    _POINTERS[key] = (now + get_settings().scores_pointer_ttl_seconds, run_id)
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
    if not row[1]:
        raise Gone(f"The scores of run {run_id} were deleted (superseded runs are pruned).")


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
    name = criterion or _main_criterion(session)
    criterion_id = _criterion_id(session, name)
    if run_id is not None:
        _check_readable_run(session, run_id)
        chosen: int | None = run_id
    else:
        chosen = _published_run(session, criterion_id)
    if chosen is None:
        nothing = ScorePage(
            items=[], total=0, limit=limit, offset=offset, criterion=name, run_id=None
        )
        return nothing.model_dump_json().encode()
    key = (_database_key(session), chosen, criterion_id, order, limit, offset, min_contributors)
    page = _ScorePageQuery(session, name, criterion_id, chosen, min_contributors)
    return _PAGES.get_or_compute(key, lambda: page.render(order, limit, offset))


def cached_global_scores(
    *,
    database: str,
    criterion: str | None,
    order: Literal["asc", "desc"],
    limit: int,
    offset: int,
    min_contributors: int,
) -> bytes | None:
    """The published run's page if this process has it and the pointer is fresh, else None.

    Touches neither the database nor a thread: the event loop answers cached pages itself, and
    only a miss goes to `global_scores` in the threadpool.
    """
    name = criterion or _MAIN.values.get(database)
    if name is None:
        return None
    known = _CRITERIA.values.get((database, name))
    if known is None:
        return None
    criterion_id = known[0]
    remembered = _POINTERS.get((database, criterion_id))
    if remembered is None or remembered[0] <= time.monotonic() or remembered[1] is None:
        return None
    key = (database, remembered[1], criterion_id, order, limit, offset, min_contributors)
    return _PAGES.values.get(key)


Ranking = list[tuple[str, float, float, int, int]]


class _ScorePageQuery:
    """One run's ranking on one criterion, filtered by contributors."""

    def __init__(
        self, session: Session, name: str, criterion_id: int, run_id: int, min_contributors: int
    ) -> None:
        self.session = session
        self.name = name
        self.run_id = run_id
        self.criterion_id = criterion_id
        self.min_contributors = min_contributors

    def ranking(self) -> Ranking:
        """Every video of the run, best first (video id breaks ties, in the same direction)."""
        rows = self.session.execute(
            text(
                "SELECT v.external_id, g.score, g.uncertainty, g.n_comparisons, g.n_contributors"
                " FROM global_scores g JOIN videos v ON v.id = g.video_id"
                " WHERE g.run_id = :run AND g.criterion_id = :criterion"
                " AND g.n_contributors >= :min ORDER BY g.score DESC, g.video_id DESC"
            ),
            {"run": self.run_id, "criterion": self.criterion_id, "min": self.min_contributors},
        ).all()
        return [tuple(row) for row in rows]

    def render(self, order: str, limit: int, offset: int) -> bytes:
        # One query per run and filter, then every page is a slice: a cold page costs no query.
        key = (_database_key(self.session), self.run_id, self.criterion_id, self.min_contributors)
        ranking = _RANKINGS.get_or_compute(key, self.ranking)
        ordered = ranking if order == "desc" else ranking[::-1]
        items = [
            GlobalScorePublic(
                video_id=video,
                criterion=self.name,
                score=score,
                display_score=display_score(score),
                uncertainty=uncertainty,
                n_comparisons=n_comparisons,
                n_contributors=n_contributors,
                run_id=self.run_id,
            )
            for video, score, uncertainty, n_comparisons, n_contributors in ordered[
                offset : offset + limit
            ]
        ]
        page = ScorePage(
            items=items,
            total=len(ranking),
            limit=limit,
            offset=offset,
            criterion=self.name,
            run_id=self.run_id,
        )
        return page.model_dump_json().encode()


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
        criterion_id = _criterion_id(session, criterion)
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
