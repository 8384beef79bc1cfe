"""Who is calling: the user and scopes of the credential sent, so a frontend can show them."""

from typing import Annotated, Literal

from fastapi import APIRouter, Header
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.core.db import SessionDep
from app.identity.security import authenticate, cached_principal

router = APIRouter(tags=["identity"])


class Me(BaseModel):
    user_id: str | None
    scopes: list[str]
    kind: Literal["user key", "service key", "token"]


@router.get("/me", response_model=Me)
async def who_am_i(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Me:
    """The credential's user (null for a service key, which acts for any user) and scopes;
    401 without a valid credential."""
    principal = cached_principal(authorization)
    if principal is None:
        principal = await run_in_threadpool(authenticate, session, authorization)
    kind: Literal["user key", "service key", "token"] = (
        "token"
        if principal.credential.startswith("jwt:")
        else "user key"
        if principal.user_id is not None
        else "service key"
    )
    return Me(user_id=principal.user_id, scopes=sorted(principal.scopes), kind=kind)
