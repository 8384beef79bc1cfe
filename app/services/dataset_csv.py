"""Tournesol public-dataset CSV rows: streaming validation into stored-orientation comparisons."""

import csv
import math
import re
from collections.abc import Iterable, Iterator
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
    lines: Iterable[str], *, criteria: set[str], default_score_max: float
) -> Iterator[ComparisonRow | RowError]:
    """Validate each data row; yields a row or the first problem found in it, in file order."""
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CsvHeaderError(
            f"CSV header lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}[, score_max, week_date]"
        )
    for number, record in enumerate(reader, start=1):
        yield _parse_record(number, record, criteria, default_score_max)


def _parse_record(
    number: int, record: dict[str, str | None], criteria: set[str], default_score_max: float
) -> ComparisonRow | RowError:
    if None in record:
        return RowError(number, "", "more fields than the header has")
    user = (record["public_username"] or "").strip()
    video_a = (record["video_a"] or "").strip()
    video_b = (record["video_b"] or "").strip()
    criterion = (record["criteria"] or "").strip()
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
    score = _number(record.get("score"))
    if score is None:
        return RowError(number, "score", f"score is not a number: {record.get('score')!r}")
    raw_max = (record.get("score_max") or "").strip()
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
