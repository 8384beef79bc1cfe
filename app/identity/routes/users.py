"""Admin API for users: mark a user trusted or not, list users by their mark."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import PagingDep
from app.api.openapi import problems
from app.api.schemas import Page, UserId
from app.core.db import SessionDep
from app.core.errors import NotFound
from app.identity.schemas import UserPublic
from app.identity.security import scoped
from app.models import User
from app.runs import trust

router = APIRouter(prefix="/users", tags=["users"], dependencies=[scoped("admin")])


def public(row: User) -> UserPublic:
    return UserPublic(
        user_id=row.external_id,
        trusted=row.trusted,
        trust_changed_at=trust.aware(row.trust_changed_at),
        created_at=trust.aware(row.created_at) or row.created_at,
    )


@router.get("", response_model=Page[UserPublic])
def list_users(
    session: SessionDep,
    paging: PagingDep,
    trusted: Annotated[
        bool | None, Query(description="Only trusted (true) or untrusted (false) users.")
    ] = None,
) -> Page[UserPublic]:
    """Users in the order they became known, with their trust mark."""
    rows, total = trust.list_users(
        session, trusted=trusted, limit=paging.limit, offset=paging.offset
    )
    return Page(
        items=[public(row) for row in rows], total=total, limit=paging.limit, offset=paging.offset
    )


@router.put("/{user_id}/trust", response_model=UserPublic)
def trust_user(user_id: UserId, session: SessionDep) -> UserPublic:
    """Mark the user trusted (again changes nothing; a user no comparison named yet is created).
    The next training run gives them a full voting right."""
    row = trust.set_trusted(session, user_id, True)
    return public(row)


@router.delete("/{user_id}/trust", response_model=UserPublic, responses=problems(404))
def untrust_user(user_id: UserId, session: SessionDep) -> UserPublic:
    """Remove the mark (again changes nothing): the user's voting right becomes their share of
    the untrusted contributors' capped one, from the next training run."""
    try:
        return public(trust.untrust(session, user_id))
    except trust.UnknownUser as exc:
        raise NotFound(str(exc)) from exc
