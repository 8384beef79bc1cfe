"""Shared API shapes: identifier types, the free-text rule and the paginated envelope."""

import re
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

T = TypeVar("T")

# One rule for every free text the API takes (query parameters, labels, notes, settings): no
# control character but tab, newline and carriage return. PostgreSQL cannot store NUL in text, and
# none of the others belongs in a name, a filter or a label; the pattern puts the rule in the
# OpenAPI too.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Free text under the rule; the length bound goes with each use (`Query(max_length=…)`, `Field`).
Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN)]

# A name shown on one line of a listing (API key names): no control character at all, so a name
# cannot start a line of its own or recolour a terminal in `licchavi api-key list`.
LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
Line = Annotated[str, StringConstraints(pattern=LINE_PATTERN)]
_LINE = re.compile(LINE_PATTERN)


def is_one_line(value: str) -> bool:
    """Whether `value` holds no control character (the `Line` rule)."""
    return _LINE.match(value) is not None


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


# One rule for ids at every entry point (JSON, CSV upload, `licchavi import`, paths and queries).
# Tournesol public usernames follow Django's username rule, whose `\w` is Python's: letters and
# digits of any script and `_`. Python's `re` decides, not pydantic's Rust engine, whose `\w` also
# takes combining marks and joiners (U+0301, U+200D): ids made of those were accepted as JSON, then
# refused by the CSV reader, so an export could not be imported back. Video ids are
# platform-prefixed (`yt:dQw4w9WgXcQ`) or bare YouTube ids as in the public dataset.
USER_ID_PATTERN = r"^[\w.@+\-:]+$"
VIDEO_ID_PATTERN = r"^[\w.\-:]+$"
USER_ID_MAX_LENGTH = 150
VIDEO_ID_MAX_LENGTH = 100
_USER_ID = re.compile(rf"[\w.@+\-:]{{1,{USER_ID_MAX_LENGTH}}}")
_VIDEO_ID = re.compile(rf"[\w.\-:]{{1,{VIDEO_ID_MAX_LENGTH}}}")


def is_user_id(value: str) -> bool:
    return _USER_ID.fullmatch(value) is not None


def is_video_id(value: str) -> bool:
    return _VIDEO_ID.fullmatch(value) is not None


def _user_id(value: str) -> str:
    if not is_user_id(value):
        raise ValueError("a user id is 1 to 150 letters, digits or _ . @ + - :")
    return value


def _video_id(value: str) -> str:
    if not is_video_id(value):
        raise ValueError("a video id is 1 to 100 letters, digits or _ . - :")
    return value


UserId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=USER_ID_MAX_LENGTH),
    AfterValidator(_user_id),
    Field(json_schema_extra={"pattern": USER_ID_PATTERN}),
]
VideoId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=VIDEO_ID_MAX_LENGTH),
    AfterValidator(_video_id),
    Field(json_schema_extra={"pattern": VIDEO_ID_PATTERN}),
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
