"""Shared API shapes: identifier types, the free-text rule and the paginated envelope."""

import re
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, StringConstraints

T = TypeVar("T")

# One rule for every free text the API takes (query parameters, labels, notes, settings): no
# control character but tab, newline and carriage return. PostgreSQL cannot store NUL in text, and
# none of the others belongs in a name, a filter or a label; the pattern puts the rule in the
# OpenAPI too.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Free text under the rule; the length bound goes with each use (`Query(max_length=…)`, `Field`).
Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN)]


def _no_control_characters(value: Any, path: str = "") -> Any:
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise ValueError(f"{path or 'text'}: control characters are not allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_control_characters(key, path)
            _no_control_characters(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_control_characters(item, f"{path}/{index}")
    return value


# Free-form JSON settings (run configs, trial overrides) under the same text rule, keys included.
JsonSettings = Annotated[dict[str, Any], AfterValidator(_no_control_characters)]

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
