"""Admin API for API keys: create (the key is answered once), list, revoke."""

from fastapi import APIRouter, status

from app.api.auth_first import AuthFirstRoute
from app.api.deps import PagingDep
from app.api.schemas import Page
from app.core.db import SessionDep
from app.core.errors import InvalidInput, NotFound
from app.identity import service
from app.identity.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from app.identity.security import UnknownScope, create_api_key, scoped
from app.models import ApiKey

router = APIRouter(
    prefix="/api-keys",
    tags=["api keys"],
    dependencies=[scoped("admin")],
    route_class=AuthFirstRoute,
)


def public(row: ApiKey) -> ApiKeyPublic:
    assert row.id is not None
    return ApiKeyPublic(
        id=row.id,
        prefix=row.prefix,
        name=row.name,
        scopes=row.scopes.split(),
        user_id=row.user_id,
        created_at=row.created_at,
        last_used_at=service.aware(row.last_used_at),
        expires_at=service.aware(row.expires_at),
        revoked_at=service.aware(row.revoked_at),
        status=service.key_status(row),
    )


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(payload: ApiKeyCreate, session: SessionDep) -> ApiKeyCreated:
    """Create a key; the answer holds the key itself, which is never shown again."""
    try:
        expires_at = (
            service.parse_expiry(payload.expires_in)
            if payload.expires_in is not None
            else payload.expires_at
        )
        row, key = create_api_key(
            session,
            name=payload.name,
            scopes=payload.scopes,
            user_id=payload.user_id,
            expires_at=expires_at,
        )
    except (UnknownScope, ValueError) as exc:
        raise InvalidInput(str(exc)) from exc
    return ApiKeyCreated(**public(row).model_dump(), key=key)


@router.get("", response_model=Page[ApiKeyPublic])
def list_keys(session: SessionDep, paging: PagingDep) -> Page[ApiKeyPublic]:
    """Every key, oldest first: prefix, name, scopes, user, created, last used, expiry, status."""
    rows, total = service.list_keys(session, limit=paging.limit, offset=paging.offset)
    return Page(
        items=[public(r) for r in rows], total=total, limit=paging.limit, offset=paging.offset
    )


@router.post("/{prefix}/revoke", response_model=ApiKeyPublic)
def revoke_key(prefix: str, session: SessionDep) -> ApiKeyPublic:
    """Revoke the key with this prefix (again changes nothing): every API process refuses it
    within seconds. The row stays, for the record."""
    try:
        return public(service.revoke_key(session, prefix))
    except service.UnknownKey as exc:
        raise NotFound(f"No API key {service.shown_key(prefix)}.") from exc
