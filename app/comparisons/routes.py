"""Comparison endpoints: write one, write many (JSON or CSV), list, read and delete a pair."""

import io
from typing import Annotated, Any, NoReturn

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.api.auth_first import AuthFirstRoute
from app.api.deps import PagingDep
from app.api.openapi import problems
from app.api.schemas import CriterionName, Page, UserId, VideoId
from app.comparisons import service
from app.comparisons.dataset_csv import CsvHeaderError, RowError, parse_rows
from app.comparisons.schemas import (
    BulkResult,
    ComparisonCreate,
    ComparisonFields,
    ComparisonPublic,
    ComparisonWriteResult,
    PairComparison,
    comparison_checks_pass,
)
from app.comparisons.upsert import ComparisonRow, oriented
from app.comparisons.write_groups import grouped, write_groups
from app.core.config import get_settings
from app.core.db import SessionDep, commit_request, get_engine, is_request_session
from app.core.errors import (
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    validation_errors,
)
from app.core.json_body import JSON, media_type, parse_json, unsupported_media_type
from app.identity.security import Principal, require_scope, scoped

router = APIRouter(prefix="/comparisons", tags=["comparisons"], route_class=AuthFirstRoute)
WRITE_SCOPE = "comparisons:write"
Writer = Annotated[Principal, Depends(require_scope(WRITE_SCOPE))]

MAX_LISTED_ERRORS = 100
# Single writes running at once per event loop; more only contend for the GIL, the database
# connections and the cores (on 2 cores, 16 at once served 25% fewer writes than 8). A limiter
# belongs to one event loop, hence one per loop (tests run several).
SINGLE_WRITES_AT_ONCE = 4
_single_writes: RunVar[CapacityLimiter] = RunVar("single_writes")


def single_writes_at_once() -> int:
    """SINGLE_WRITES_AT_ONCE, but one on SQLite: there the process's write gate lets one write
    transaction run at a time anyway, and each write waiting at the gate is a thread woken when
    it opens; queued on the event loop instead, they cost nothing while they wait (figures in
    docs/reliability.md, "Round 2")."""
    return 1 if get_engine().dialect.name == "sqlite" else SINGLE_WRITES_AT_ONCE


def single_writes_limiter() -> CapacityLimiter:
    try:
        return _single_writes.get()
    except LookupError:
        limiter = CapacityLimiter(single_writes_at_once())
        _single_writes.set(limiter)
        return limiter


_bulk_adapter = TypeAdapter(list[ComparisonFields])


@router.post(
    "",
    response_model=ComparisonWriteResult,
    responses={
        200: {"description": "Every score already stored or replaced"},
        201: {"description": "At least one new row"},
    },
    # Checked before the body is read (AuthFirstRoute); the principal is then a cache hit.
    dependencies=[scoped(WRITE_SCOPE)],
)
async def create_comparison(
    payload: ComparisonCreate, session: SessionDep, response: Response, principal: Writer
) -> ComparisonWriteResult:
    """Store a comparison; a re-post of the same pair (either order) replaces its scores.

    With a user key or token, `user_id` may be omitted (it is the credential's user); naming
    another user is forbidden."""
    payload = bound(payload, principal)
    if is_request_session(session) and grouped():
        # Committed with the writes queued beside it (the request session stays unused); a
        # session the request did not open (a test's) keeps its own transaction.
        result = await write_groups().write(payload)
    else:
        # One thread hop for the write and its commit (a sync endpoint would take one for the
        # write and the session dependency another for the commit).
        result = await to_thread.run_sync(
            write_and_commit, session, payload, limiter=single_writes_limiter()
        )
    response.status_code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
    return result


def bound(payload: ComparisonCreate, principal: Principal) -> ComparisonCreate:
    """The payload with the user it is written for: a user credential's own (naming another is a
    403); a service credential must name one."""
    user = principal.acting_for(payload.user_id)
    if user is None:
        raise InvalidInput(
            "/user_id: required with a service key",
            errors=[_user_id_missing("/user_id", ["body", "user_id"])],
        )
    return payload if user == payload.user_id else payload.model_copy(update={"user_id": user})


def _user_id_missing(pointer: str, loc: list[Any]) -> dict[str, Any]:
    return {"loc": loc, "pointer": pointer, "message": "Field required", "type": "missing"}


def write_and_commit(session: Session, payload: ComparisonCreate) -> ComparisonWriteResult:
    if is_request_session(session):
        # Usually one round trip instead of four (see the function); a session the request did
        # not open (a caller's or a test's transaction) keeps the transactional path.
        result = service.write_comparison_in_one_statement(session, payload=payload)
        if result is not None:
            return result
    result = service.write_comparison(session, payload=payload)
    commit_request(session)
    return result


@router.post(
    "/bulk",
    response_model=BulkResult,
    dependencies=[scoped(WRITE_SCOPE)],
    responses=problems(415),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ComparisonCreate"},
                    }
                },
                "text/csv": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def create_comparisons_bulk(
    request: Request, session: SessionDep, principal: Writer
) -> BulkResult:
    """All-or-nothing ingest of a JSON list or a public-dataset CSV; every row is checked first.

    With a user key or token, every row is that user's: `user_id` (JSON) or the
    `public_username` column (CSV) may be left out, and a row naming another user is a 403."""
    body = await request.body()
    media = media_type(request.headers.get("content-type"))
    if media == "text/csv":
        rows = await run_in_threadpool(_rows_from_csv, session, body, principal)
    elif media in (JSON, ""):
        rows = await run_in_threadpool(_rows_from_json, session, body, principal)
    else:
        raise unsupported_media_type(media, JSON, "text/csv")
    outcome = await run_in_threadpool(service.write_many, session, rows=rows)
    return BulkResult(
        inserted=outcome.inserted, updated=outcome.updated, unchanged=outcome.unchanged
    )


def _too_many(count: int) -> None:
    limit = get_settings().bulk_max_rows
    if count > limit:
        raise PayloadTooLarge(f"{count} rows sent; a bulk request takes at most {limit}.")


def _rows_from_json(session: Any, body: bytes, principal: Principal) -> list[ComparisonRow]:
    raw = parse_json(body)
    if not isinstance(raw, list):
        raise InvalidInput("Body must be a JSON list of comparisons.")
    _too_many(len(raw))
    if principal.user_id is not None:
        _bind_rows(raw, principal.user_id)
    criteria = service.known_criteria(session)
    rows = _fast_rows(raw, criteria)
    if rows is not None:
        return rows
    # Something is wrong: every row through the models, so one answer lists every bad row.
    payloads, positions, errors = _validate_rows(raw)
    # Unknown criteria are checked on the rows that passed.
    rows, criteria_errors = service.rows_from_payloads(payloads, criteria, positions=positions)
    if errors or criteria_errors:
        _raise_row_errors(sorted(errors + criteria_errors, key=lambda e: e["row"]))
    return rows


def _bind_rows(raw: list[Any], user: str) -> None:
    """Give every row of a user credential's list that user: filled in where left out; a row
    naming another user makes the whole request a 403."""
    others: list[int] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            continue  # validation reports it
        named = item.get("user_id")
        if named is None:
            item["user_id"] = user
        elif not isinstance(named, str) or named.strip() != user:
            others.append(index)
    if others:
        raise _forbidden_rows(user, others)


def _forbidden_rows(user: str, rows: list[int]) -> Forbidden:
    shown = ", ".join(str(r) for r in rows[:10]) + (" …" if len(rows) > 10 else "")
    return Forbidden(
        f"This credential acts for user {user!r} only; rows naming another user: {shown}. "
        "Nothing was stored."
    )


def _fast_rows(raw: list[Any], criteria: set[str]) -> list[ComparisonRow] | None:
    """The stored rows of a list without a single error, validated in one call; else None."""
    try:
        comparisons = _bulk_adapter.validate_python(raw)
    except ValidationError:
        return None
    default_max = get_settings().score_max
    rows: list[ComparisonRow] = []
    for comparison in comparisons:
        if not comparison_checks_pass(comparison, default_max):
            return None
        user, video_a, video_b = comparison["user_id"], comparison["video_a"], comparison["video_b"]
        for score in comparison["criteria_scores"]:
            if score["criterion"] not in criteria:
                return None
            rows.append(
                oriented(
                    user,
                    video_a,
                    video_b,
                    score["criterion"],
                    score["score"],
                    score.get("score_max") or default_max,
                )
            )
    return rows


def _validate_rows(
    raw: list[Any],
) -> tuple[list[ComparisonCreate], list[int], list[dict[str, Any]]]:
    """Valid payloads with their positions, and every error found, row by row."""
    payloads: list[ComparisonCreate] = []
    positions: list[int] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        try:
            payload = ComparisonCreate.model_validate(item)
        except ValidationError as exc:
            for err in validation_errors(exc.errors()):
                errors.append(
                    {**err, "row": index, "pointer": f"/{index}{err['pointer']}".rstrip("/")}
                )
            continue
        if payload.user_id is None:  # a service key's rows name their user
            errors.append(
                {"row": index, **_user_id_missing(f"/{index}/user_id", ["body", index, "user_id"])}
            )
            continue
        payloads.append(payload)
        positions.append(index)
    return payloads, positions, errors


def _rows_from_csv(session: Any, body: bytes, principal: Principal) -> list[ComparisonRow]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("CSV body must be UTF-8.") from exc
    parsed: list[ComparisonRow] = []
    errors: list[dict[str, Any]] = []
    user = principal.user_id
    others: list[int] = []  # rows of a user credential's file naming another user
    try:
        # One item per data row, numbered from 1 as the errors number them.
        for number, item in enumerate(
            parse_rows(
                io.StringIO(text, newline=""),
                criteria=service.known_criteria(session),
                default_score_max=get_settings().score_max,
                default_user=user,
            ),
            1,
        ):
            if isinstance(item, RowError):
                errors.append(item.as_dict())
            else:
                if user is not None and item.user != user:
                    others.append(number)
                parsed.append(item)
    except CsvHeaderError as exc:
        raise InvalidInput(str(exc)) from exc
    _too_many(len(parsed) + len(errors))
    if user is not None and others:
        raise _forbidden_rows(user, others)
    if errors:
        _raise_row_errors(errors)
    return parsed


def _raise_row_errors(errors: list[dict[str, Any]]) -> NoReturn:
    rows = sorted({e["row"] for e in errors})
    shown = ", ".join(str(r) for r in rows[:10]) + (" …" if len(rows) > 10 else "")
    raise InvalidInput(
        f"{len(rows)} invalid row(s), nothing was stored; rows: {shown}",
        errors=errors[:MAX_LISTED_ERRORS],
    )


@router.get("", response_model=Page[ComparisonPublic])
def list_comparisons(
    session: SessionDep,
    paging: PagingDep,
    user_id: Annotated[UserId | None, Query()] = None,
    video_id: Annotated[VideoId | None, Query(description="Either side of the pair.")] = None,
    criterion: Annotated[CriterionName | None, Query()] = None,
) -> Page[ComparisonPublic]:
    """Comparisons in insertion order, pairs in stored (sorted) orientation."""
    items, total = service.list_comparisons(
        session,
        user_id=user_id,
        video_id=video_id,
        criterion=criterion,
        limit=paging.limit,
        offset=paging.offset,
    )
    return Page(items=items, total=total, limit=paging.limit, offset=paging.offset)


@router.get("/{user_id}/{video_a}/{video_b}", response_model=PairComparison)
def get_comparison(
    user_id: UserId, video_a: VideoId, video_b: VideoId, session: SessionDep
) -> PairComparison:
    """The user's scores for the pair, signed as seen from the order asked."""
    return service.get_pair(session, user_id=user_id, video_a=video_a, video_b=video_b)


@router.delete("/{user_id}/{video_a}/{video_b}", status_code=status.HTTP_204_NO_CONTENT)
def delete_comparison(
    user_id: UserId,
    video_a: VideoId,
    video_b: VideoId,
    session: SessionDep,
    principal: Writer,
    criterion: Annotated[CriterionName | None, Query(description="Only this criterion.")] = None,
) -> Response:
    """Delete the user's comparison of the pair; a user key or token deletes only its own."""
    principal.acting_for(user_id)
    service.delete_pair(
        session, user_id=user_id, video_a=video_a, video_b=video_b, criterion=criterion
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
