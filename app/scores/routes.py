"""Scores: global ones (public) of the published run or any succeeded run; individual ones."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import MAX_ID, PagingDep
from app.api.openapi import problems
from app.api.schemas import CriterionName, UserId, VideoId
from app.core.db import SessionDep
from app.identity.security import Principal, require_scope
from app.scores import pages as score_pages
from app.scores import service
from app.scores.schemas import ScorePage, UserScores, VideoScores

router = APIRouter(tags=["scores"])


@router.get(
    "/scores", response_model=ScorePage, response_class=Response, responses=problems(404, 409, 410)
)
async def list_scores(
    session: SessionDep,
    paging: PagingDep,
    criterion: Annotated[
        CriterionName | None, Query(description="Default: the main criterion.")
    ] = None,
    order: Annotated[Literal["desc", "asc"], Query()] = "desc",
    min_contributors: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    run_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="Read this succeeded run instead of the published one."),
    ] = None,
) -> Response:
    """Global scores ranked by score (video id breaks ties); every item is from one run."""
    # The hot path: a page this process has already rendered is answered on the event loop with
    # no query and no thread hop (hops, and threads contending for the GIL, made a 1 s tail).
    page = None
    if run_id is None:
        page = score_pages.cached_global_scores(
            database=str(session.get_bind().engine.url),
            criterion=criterion,
            order=order,
            limit=paging.limit,
            offset=paging.offset,
            min_contributors=min_contributors,
        )
    if page is None:
        page = await run_in_threadpool(
            score_pages.global_scores,
            session,
            criterion=criterion,
            order=order,
            limit=paging.limit,
            offset=paging.offset,
            min_contributors=min_contributors,
            run_id=run_id,
        )
    return Response(content=page, media_type="application/json")


@router.get("/videos/{video_id}/scores", response_model=VideoScores)
def get_video_scores(video_id: VideoId, session: SessionDep) -> VideoScores:
    """The video's published global score on every criterion."""
    return service.video_scores(session, video_id=video_id)


@router.get("/users/{user_id}/scores", response_model=UserScores)
def get_user_scores(
    user_id: UserId,
    session: SessionDep,
    paging: PagingDep,
    principal: Annotated[Principal, Depends(require_scope("scores:read_local"))],
    criterion: Annotated[CriterionName | None, Query()] = None,
) -> UserScores:
    """The user's individual (local) scores from each criterion's published run; a user key or
    token reads only its own user's."""
    principal.acting_for(user_id)
    return service.user_scores(
        session, user_id=user_id, criterion=criterion, limit=paging.limit, offset=paging.offset
    )
