"""Tournesol public-dataset CSV rows: streaming validation into stored-orientation comparisons."""

import csv
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from app.services.upsert import ComparisonRow, oriented

REQUIRED_COLUMNS = ("public_username", "video_a", "video_b", "criteria", "score")
EXPORT_COLUMNS = (*REQUIRED_COLUMNS, "score_max", "week_date")

_USER_RE = re.compile(r"^[\w.@+\-:]{1,150}$")
_VIDEO_RE = re.compile(r"^[\w.\-:]{1,100}$")


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row (the header is not counted)
    field: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"row": self.row, "field": self.field, "message": self.message}


class CsvHeaderError(ValueError):
    """The header lacks a required column."""


def parse_rows(
    lines: Iterable[str],
    *,
    criteria: set[str],
    default_score_max: float,
    default_user: str | None = None,
) -> Iterator[ComparisonRow | RowError]:
    """Validate each data row; yields a row or the first problem found in it, in file order.

    With `default_user`, the `public_username` column may be left out: every row is that user's."""
    # The csv module's reader with column positions: a dict per row (DictReader) cost as much as
    # the validation itself. Rows are read as DictReader would: blank lines skipped and not
    # counted, a short row's missing fields empty, a repeated column's last occurrence used.
    reader = csv.reader(lines)
    header = next(reader, None) or []
    required: tuple[str, ...] = REQUIRED_COLUMNS
    if default_user is not None and "public_username" not in header:
        required = REQUIRED_COLUMNS[1:]
    missing = [c for c in required if c not in header]
    if missing:
        raise CsvHeaderError(
            f"CSV header lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}[, score_max, week_date]"
        )
    position = {name: i for i, name in enumerate(header)}
    user_at = position.get("public_username")
    a_at, b_at, criterion_at, score_at = (position[c] for c in REQUIRED_COLUMNS[1:])
    score_max_at = position.get("score_max")
    width = len(header)
    number = 0
    for record in reader:
        if not record:
            continue
        number += 1
        if len(record) > width:
            yield RowError(number, "", "more fields than the header has")
            continue
        fields: Sequence[str | None] = record
        if len(record) < width:
            fields = [*record, *[None] * (width - len(record))]
        yield _parse_record(
            number,
            # An empty cell, like a missing column, is the default user's.
            (None if user_at is None else fields[user_at]) or default_user,
            fields[a_at],
            fields[b_at],
            fields[criterion_at],
            fields[score_at],
            None if score_max_at is None else fields[score_max_at],
            criteria,
            default_score_max,
        )


def _parse_record(
    number: int,
    raw_user: str | None,
    raw_a: str | None,
    raw_b: str | None,
    raw_criterion: str | None,
    raw_score: str | None,
    raw_max: str | None,
    criteria: set[str],
    default_score_max: float,
) -> ComparisonRow | RowError:
    user = (raw_user or "").strip()
    video_a = (raw_a or "").strip()
    video_b = (raw_b or "").strip()
    criterion = (raw_criterion or "").strip()
    if not _USER_RE.match(user):
        return RowError(number, "public_username", f"invalid user id {user!r}")
    if not _VIDEO_RE.match(video_a):
        return RowError(number, "video_a", f"invalid video id {video_a!r}")
    if not _VIDEO_RE.match(video_b):
        return RowError(number, "video_b", f"invalid video id {video_b!r}")
    if video_a == video_b:
        return RowError(number, "video_b", "video_a and video_b must differ")
    if criterion not in criteria:
        return RowError(number, "criteria", f"unknown criterion {criterion!r}")
    score = _number(raw_score)
    if score is None:
        return RowError(number, "score", f"score is not a number: {raw_score!r}")
    raw_max = (raw_max or "").strip()
    score_max = default_score_max if raw_max == "" else _number(raw_max)
    if score_max is None or score_max <= 0:
        return RowError(number, "score_max", f"score_max must be a positive number: {raw_max!r}")
    if abs(score) > score_max:
        return RowError(number, "score", f"score {score:g} outside [-{score_max:g}, {score_max:g}]")
    return oriented(user, video_a, video_b, criterion, score, score_max)


def _number(raw: str | None) -> float | None:
    try:
        value = float((raw or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def format_number(value: float) -> str:
    """Integers without a trailing `.0`, as in Tournesol's exports; others in shortest repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def week_date(moment: datetime) -> str:
    """Monday of the moment's week, the public dataset's `week_date`."""
    day: date = moment.date()
    return (day - timedelta(days=day.weekday())).isoformat()
