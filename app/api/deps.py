"""Route parameters shared by resources: paging, and the ids of stored resources."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query

from app.core.config import get_settings
from app.core.errors import InvalidInput

# Ids are positive 64-bit integers (PostgreSQL's bigint, SQLite's integer).
MAX_ID = 2**63 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


@dataclass(frozen=True)
class Paging:
    """`limit` and `offset` of a list request (an async dependency: no I/O, so no thread hop)."""

    limit: int
    offset: int


async def paging(
    limit: Annotated[int, Query(ge=1, description="Page size (capped by PAGE_MAX_LIMIT).")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> Paging:
    cap = get_settings().page_max_limit
    if limit > cap:
        raise InvalidInput(
            f"/query/limit: must be at most {cap}",
            errors=[
                {
                    "loc": ["query", "limit"],
                    "pointer": "/query/limit",  # as FastAPI's own query errors
                    "message": f"must be at most {cap}",
                    "type": "less_than_equal",
                }
            ],
        )
    return Paging(limit=limit, offset=offset)


PagingDep = Annotated[Paging, Depends(paging)]
