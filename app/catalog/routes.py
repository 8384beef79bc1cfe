"""Read-only catalogue endpoints: videos, a user's comparisons; criteria (list and add)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.auth_first import AuthFirstRoute
from app.api.deps import PagingDep
from app.api.openapi import problems
from app.api.schemas import CriterionName, Page, UserId
from app.catalog import service as catalog
from app.catalog.schemas import CriterionCreate, CriterionPublic, VideoPublic
from app.comparisons import service as comparisons
from app.comparisons.schemas import ComparisonPublic
from app.core.db import SessionDep
from app.identity.security import scoped

router = APIRouter(tags=["catalogue"], route_class=AuthFirstRoute)


@router.get("/videos", response_model=Page[VideoPublic])
def list_videos(
    session: SessionDep,
    paging: PagingDep,
    criterion: Annotated[
        CriterionName | None, Query(description="Count only this criterion.")
    ] = None,
) -> Page[VideoPublic]:
    items, total = catalog.list_videos(
        session, criterion=criterion, limit=paging.limit, offset=paging.offset
    )
    return Page(items=items, total=total, limit=paging.limit, offset=paging.offset)


@router.get("/users/{user_id}/comparisons", response_model=Page[ComparisonPublic])
def list_user_comparisons(
    user_id: UserId,
    session: SessionDep,
    paging: PagingDep,
    criterion: Annotated[CriterionName | None, Query()] = None,
) -> Page[ComparisonPublic]:
    items, total = comparisons.list_comparisons(
        session,
        user_id=user_id,
        video_id=None,
        criterion=criterion,
        limit=paging.limit,
        offset=paging.offset,
    )
    return Page(items=items, total=total, limit=paging.limit, offset=paging.offset)


@router.get("/criteria", response_model=list[CriterionPublic])
def list_criteria(session: SessionDep) -> list[CriterionPublic]:
    return catalog.list_criteria(session)


@router.post(
    "/criteria",
    response_model=CriterionPublic,
    status_code=status.HTTP_201_CREATED,
    dependencies=[scoped("criteria:write")],
    responses=problems(409),
)
def create_criterion(payload: CriterionCreate, session: SessionDep) -> CriterionPublic:
    return catalog.create_criterion(session, payload=payload)
