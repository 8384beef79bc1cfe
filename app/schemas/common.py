"""Shared API shapes: identifier types and the paginated envelope."""

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, StringConstraints

T = TypeVar("T")

# Tournesol public usernames follow Django's username rule; video ids are platform-prefixed
# (`yt:dQw4w9WgXcQ`) or bare YouTube ids as in the public dataset.
UserId = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=150, pattern=r"^[\w.@+\-:]+$"
    ),
]
VideoId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[\w.\-:]+$"),
]
CriterionName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$"
    ),
]


class Page(BaseModel, Generic[T]):
    """A page of a list in a stable order."""

    items: list[T]
    total: int
    limit: int
    offset: int
