"""Comparisons: write from API payloads, read with filters and pages, delete."""

from collections.abc import Container, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, true
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from app.comparisons.schemas import (
    ComparisonCreate,
    ComparisonPublic,
    ComparisonWriteResult,
    CriterionScoreResult,
    PairComparison,
    PairScore,
)
from app.comparisons.upsert import (
    ComparisonRow,
    UnknownCriteria,
    UpsertOutcome,
    oriented,
    upsert_comparisons,
    upsert_if_auto_runs_queued,
)
from app.core.config import get_settings
from app.core.errors import InvalidInput, NotFound
from app.models import Comparison, Criterion, User, Video
from app.runs.freshness import comparisons_changed

VideoA = aliased(Video, name="video_a")
VideoB = aliased(Video, name="video_b")


def known_criteria(session: Session) -> set[str]:
    return set(session.exec(select(Criterion.name)).all())


def payload_rows(payload: ComparisonCreate) -> list[ComparisonRow]:
    """One stored-orientation row per criterion score of the payload."""
    if payload.user_id is None:
        # The routes fill it in from the credential (or refuse) before anything is stored.
        raise ValueError("a comparison is stored only once its user is known")
    default_max = get_settings().score_max
    return [
        oriented(
            payload.user_id,
            payload.video_a,
            payload.video_b,
            cs.criterion,
            cs.score,
            cs.score_max or default_max,
        )
        for cs in payload.criteria_scores
    ]


def _unknown_criteria_errors(
    payload: ComparisonCreate, unknown: Container[str], prefix: str = ""
) -> list[dict[str, Any]]:
    return [
        {
            "pointer": f"{prefix}/criteria_scores/{j}/criterion",
            "message": f"unknown criterion {cs.criterion!r}",
            "type": "unknown_criterion",
        }
        for j, cs in enumerate(payload.criteria_scores)
        if cs.criterion in unknown
    ]


def rows_from_payloads(
    payloads: Sequence[ComparisonCreate],
    criteria: set[str],
    *,
    positions: Sequence[int] | None = None,
) -> tuple[list[ComparisonRow], list[dict[str, Any]]]:
    """Stored-orientation rows, and an error per unknown criterion (at request `positions`)."""
    rows: list[ComparisonRow] = []
    errors: list[dict[str, Any]] = []
    for i, payload in zip(positions or range(len(payloads)), payloads, strict=True):
        unknown = {cs.criterion for cs in payload.criteria_scores} - criteria
        if unknown:
            errors += [{"row": i, **e} for e in _unknown_criteria_errors(payload, unknown, f"/{i}")]
        else:
            rows += payload_rows(payload)
    return rows, errors


def write_comparison(session: Session, *, payload: ComparisonCreate) -> ComparisonWriteResult:
    rows = payload_rows(payload)
    try:
        # The upsert checks the criteria in the same round trip as it looks up users and videos.
        outcome = upsert_comparisons(session, rows=rows, statuses=True)
    except UnknownCriteria as exc:
        raise _unknown_criteria(payload, exc) from exc
    comparisons_changed(
        session,
        criteria={row.criterion for row in rows},
        changed=outcome.inserted + outcome.updated,
    )
    return _write_result(payload, rows, outcome)


def write_comparisons_together(
    session: Session, *, payloads: Sequence[ComparisonCreate]
) -> list[ComparisonWriteResult]:
    """What `write_comparison` answers for each payload written on its own, one after another in
    this order in `session`'s transaction, in as few statements as that allows.

    The payloads' rows go to one upsert (the names looked up and the missing users and videos
    inserted once for all); a payload that writes a key an earlier payload of the same upsert
    writes starts the next upsert, so that it finds that row as it would have after the earlier
    write. Auto runs are scheduled once, for the criteria of the payloads that changed something,
    as the writes one by one would have scheduled them. Raises what the first failing upsert
    raises (an unknown criterion of any payload fails them all): the caller then writes them
    one by one."""
    rows_of = [payload_rows(payload) for payload in payloads]
    results: list[ComparisonWriteResult] = []
    changed: set[str] = set()
    for part in _without_repeated_keys(rows_of):
        outcome = upsert_comparisons(
            session, rows=[row for i in part for row in rows_of[i]], statuses=True
        )
        for i in part:
            own = _own_outcome(outcome, rows_of[i])
            if own.inserted + own.updated:
                changed |= {row.criterion for row in rows_of[i]}
            results.append(_write_result(payloads[i], rows_of[i], own))
    comparisons_changed(session, criteria=changed, changed=len(changed))
    return results


def _without_repeated_keys(rows_of: list[list[ComparisonRow]]) -> list[list[int]]:
    """The payloads' positions, in order, cut into runs in which no key is written twice."""
    parts: list[list[int]] = []
    seen: set[tuple[str, str, str, str]] = set()
    for i, rows in enumerate(rows_of):
        keys = {row.key for row in rows}
        if not parts or not seen.isdisjoint(keys):
            parts.append([])
            seen = set()
        parts[-1].append(i)
        seen |= keys
    return parts


def _own_outcome(outcome: UpsertOutcome, rows: list[ComparisonRow]) -> UpsertOutcome:
    """One payload's share of an upsert that wrote it with others (its keys are its own)."""
    keys = {row.key for row in rows}
    own = UpsertOutcome(statuses={key: outcome.statuses[key] for key in keys})
    own.inserted = sum(1 for status in own.statuses.values() if status == "created")
    own.updated = sum(1 for status in own.statuses.values() if status == "updated")
    own.unchanged = len(keys) - own.inserted - own.updated
    return own


def write_comparison_in_one_statement(
    session: Session, *, payload: ComparisonCreate
) -> ComparisonWriteResult | None:
    """`write_comparison` and its commit in one round trip, when it can be: PostgreSQL, and a
    session with no transaction begun. None, with nothing written, when it cannot, and then the
    caller runs `write_comparison` in a transaction as usual (the session is left without one).

    The session's connection is taken in autocommit mode and the write is one statement, which
    is then its own transaction: no BEGIN, no separate freshness check, no COMMIT (three round
    trips of the four). The statement also checks what `comparisons_changed` would check, and
    writes only when an auto run is already queued for each criterion, that is when
    `comparisons_changed` would do nothing; with auto training off it never does anything. When a
    run must be scheduled, the write and the new run stay one transaction, as before."""
    if session.in_transaction() or session.get_bind().dialect.name != "postgresql":
        return None
    rows = payload_rows(payload)
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    try:
        if get_settings().auto_train_enabled:
            outcome = upsert_if_auto_runs_queued(session, rows=rows)
        else:
            outcome = upsert_comparisons(session, rows=rows, statuses=True)
    except UnknownCriteria as exc:
        raise _unknown_criteria(payload, exc) from exc
    # Ends the session's autocommit "transaction" (no I/O: the statement committed itself) and
    # hands the connection back, its isolation level restored, so a fallback begins a real one.
    session.commit()
    return None if outcome is None else _write_result(payload, rows, outcome)


def _unknown_criteria(payload: ComparisonCreate, exc: UnknownCriteria) -> InvalidInput:
    errors = _unknown_criteria_errors(payload, exc.names)
    return InvalidInput(f"{errors[0]['pointer']}: {errors[0]['message']}", errors=errors)


def _write_result(
    payload: ComparisonCreate, rows: list[ComparisonRow], outcome: UpsertOutcome
) -> ComparisonWriteResult:
    results = [
        CriterionScoreResult(
            criterion=cs.criterion,
            score=cs.score,
            score_max=row.score_max,
            status=outcome.statuses[row.key],
        )
        for cs, row in zip(payload.criteria_scores, rows, strict=True)
    ]
    return ComparisonWriteResult(
        user_id=payload.user_id,
        video_a=payload.video_a,
        video_b=payload.video_b,
        criteria_scores=results,
        created=outcome.inserted,
        updated=outcome.updated,
        unchanged=outcome.unchanged,
    )


def write_many(session: Session, *, rows: Sequence[ComparisonRow]) -> UpsertOutcome:
    outcome = upsert_comparisons(session, rows=rows)
    comparisons_changed(
        session,
        criteria={row.criterion for row in rows},
        changed=outcome.inserted + outcome.updated,
    )
    return outcome


def _public_select() -> Any:
    return (
        sa_select(
            col(User.external_id),
            col(VideoA.external_id),
            col(VideoB.external_id),
            col(Criterion.name),
            col(Comparison.score),
            col(Comparison.score_max),
            col(Comparison.created_at),
            col(Comparison.updated_at),
        )
        .join(User, col(User.id) == col(Comparison.user_id))
        .join(VideoA, col(VideoA.id) == col(Comparison.video_a_id))
        .join(VideoB, col(VideoB.id) == col(Comparison.video_b_id))
        .join(Criterion, col(Criterion.id) == col(Comparison.criterion_id))
    )


def list_comparisons(
    session: Session,
    *,
    user_id: str | None,
    video_id: str | None,
    criterion: str | None,
    limit: int,
    offset: int,
) -> tuple[list[ComparisonPublic], int]:
    """A page of comparisons in insertion order (id), and the total matching the filters."""
    conditions: list[ColumnElement[bool]] = []
    if user_id is not None:
        user_pk = session.exec(select(User.id).where(User.external_id == user_id)).first()
        if user_pk is None:
            return [], 0
        conditions.append(col(Comparison.user_id) == user_pk)
    if video_id is not None:
        video_pk = session.exec(select(Video.id).where(Video.external_id == video_id)).first()
        if video_pk is None:
            return [], 0
        conditions.append(
            or_(col(Comparison.video_a_id) == video_pk, col(Comparison.video_b_id) == video_pk)
        )
    if criterion is not None:
        criterion_pk = session.exec(select(Criterion.id).where(Criterion.name == criterion)).first()
        if criterion_pk is None:
            raise NotFound(f"Unknown criterion {criterion!r}.")
        conditions.append(col(Comparison.criterion_id) == criterion_pk)
    where = and_(true(), *conditions)
    total = session.exec(select(func.count()).select_from(Comparison).where(where)).one()
    rows = session.execute(
        _public_select().where(where).order_by(Comparison.id).limit(limit).offset(offset)
    ).all()
    return [_public(row) for row in rows], int(total)


def _public(row: Any) -> ComparisonPublic:
    user, a, b, criterion, score, score_max, created_at, updated_at = row
    return ComparisonPublic(
        user_id=user,
        video_a=a,
        video_b=b,
        criterion=criterion,
        score=score,
        score_max=score_max,
        created_at=created_at,
        updated_at=updated_at,
    )


def get_pair(session: Session, *, user_id: str, video_a: str, video_b: str) -> PairComparison:
    """Every criterion `user_id` scored for the pair, with signs as seen from the asked order."""
    flipped = video_a > video_b
    low, high = (video_b, video_a) if flipped else (video_a, video_b)
    rows = session.execute(
        _public_select()
        .where(User.external_id == user_id, VideoA.external_id == low, VideoB.external_id == high)
        .order_by(Criterion.name)
    ).all()
    if not rows:
        raise NotFound(f"No comparison of {video_a} and {video_b} by {user_id}.")
    sign = -1.0 if flipped else 1.0
    return PairComparison(
        user_id=user_id,
        video_a=video_a,
        video_b=video_b,
        criteria_scores=[
            PairScore(
                criterion=r[3],
                score=sign * r[4] + 0.0,
                score_max=r[5],
                created_at=r[6],
                updated_at=r[7],
            )
            for r in rows
        ],
    )


def delete_pair(
    session: Session, *, user_id: str, video_a: str, video_b: str, criterion: str | None
) -> int:
    """Delete the user's comparison of the pair (one criterion or all); 404 when nothing matched."""
    low, high = sorted((video_a, video_b))
    ids = select(Comparison.id).where(
        Comparison.user_id == select(User.id).where(User.external_id == user_id).scalar_subquery(),
        Comparison.video_a_id == select(Video.id).where(Video.external_id == low).scalar_subquery(),
        Comparison.video_b_id
        == select(Video.id).where(Video.external_id == high).scalar_subquery(),
    )
    if criterion is not None:
        ids = ids.where(
            Comparison.criterion_id
            == select(Criterion.id).where(Criterion.name == criterion).scalar_subquery()
        )
    result = session.execute(delete(Comparison).where(Comparison.id.in_(ids)))  # type: ignore[union-attr]
    deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if deleted == 0:
        on = "" if criterion is None else f" on criterion {criterion!r}"
        raise NotFound(f"No comparison of {video_a} and {video_b} by {user_id}{on}.")
    comparisons_changed(
        session, criteria=None if criterion is None else [criterion], changed=deleted
    )
    return deleted
