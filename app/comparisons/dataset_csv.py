"""Tournesol public-dataset CSV rows: streaming validation into stored-orientation comparisons."""

import csv
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from app.api.schemas import is_user_id, is_video_id
from app.comparisons.upsert import ComparisonRow, oriented
from app.core.config import SCORE_MAX_LIMIT

REQUIRED_COLUMNS = ("public_username", "video_a", "video_b", "criteria", "score")
EXPORT_COLUMNS = (*REQUIRED_COLUMNS, "score_max", "week_date")
# Optional: whether an operator trusts the row's user. The export writes it when any user is
# trusted, as `true`/`false`, so that export → import → export gives the same bytes.
TRUSTED_COLUMN = "trusted"
TRUST_VALUES = {"true": True, "1": True, "false": False, "0": False}


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
    trust_marks: dict[str, bool] | None = None,
) -> Iterator[ComparisonRow | RowError]:
    """Validate each data row; yields a row or the first problem found in it, in file order.

    With `default_user`, the `public_username` column may be left out: every row is that user's.
    With `trust_marks` (an operator's import), a `trusted` column's value of each valid row is
    recorded there for its user (true/false/1/0, any case; an empty cell leaves the user as
    they are; the last row of a user wins); a row with another value is refused. Without it the
    column is not read: only operators mark users trusted."""
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
    week_at = position.get("week_date")
    trusted_at = position.get(TRUSTED_COLUMN) if trust_marks is not None else None
    width = len(header)
    number = 0
    for record in _records(reader):
        if isinstance(record, csv.Error):
            # The reader drops the rest of the line it failed on and goes on with the next one.
            number += 1
            yield RowError(number, "", f"unreadable CSV row: {record}")
            continue
        if not record:
            continue
        number += 1
        if len(record) > width:
            yield RowError(number, "", "more fields than the header has")
            continue
        fields: Sequence[str | None] = record
        if len(record) < width:
            fields = [*record, *[None] * (width - len(record))]
        parsed = _parse_record(
            number,
            # An empty cell, like a missing column, is the default user's.
            (None if user_at is None else fields[user_at]) or default_user,
            fields[a_at],
            fields[b_at],
            fields[criterion_at],
            fields[score_at],
            None if score_max_at is None else fields[score_max_at],
            None if week_at is None else fields[week_at],
            criteria,
            default_score_max,
        )
        if trusted_at is not None and trust_marks is not None and not isinstance(parsed, RowError):
            raw = (fields[trusted_at] or "").strip()
            if raw:
                mark = TRUST_VALUES.get(raw.lower())
                if mark is None:
                    yield RowError(
                        number, TRUSTED_COLUMN, f"trusted must be true, false, 1 or 0: {raw!r}"
                    )
                    continue
                trust_marks[parsed.user] = mark
        yield parsed


def _records(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """The reader's records, and in place of a record it cannot read (a field longer than
    `csv.field_size_limit()`, 131,072 characters) the error, so it is reported with its row."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield exc


def _parse_record(
    number: int,
    raw_user: str | None,
    raw_a: str | None,
    raw_b: str | None,
    raw_criterion: str | None,
    raw_score: str | None,
    raw_max: str | None,
    raw_week: str | None,
    criteria: set[str],
    default_score_max: float,
) -> ComparisonRow | RowError:
    user = (raw_user or "").strip()
    video_a = (raw_a or "").strip()
    video_b = (raw_b or "").strip()
    criterion = (raw_criterion or "").strip()
    if not is_user_id(user):
        return RowError(number, "public_username", f"invalid user id {user!r}")
    if not is_video_id(video_a):
        return RowError(number, "video_a", f"invalid video id {video_a!r}")
    if not is_video_id(video_b):
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
    if score_max is None or not 0 < score_max <= SCORE_MAX_LIMIT:
        return RowError(
            number,
            "score_max",
            f"score_max must be a number in (0, {SCORE_MAX_LIMIT:g}]: {raw_max!r}",
        )
    if abs(score) > score_max:
        return RowError(number, "score", f"score {score:g} outside [-{score_max:g}, {score_max:g}]")
    try:
        created_at = _week_start(raw_week)
    except ValueError:
        return RowError(number, "week_date", f"week_date is not a Monday YYYY-MM-DD: {raw_week!r}")
    return oriented(user, video_a, video_b, criterion, score, score_max, created_at)


_WEEK_STARTS: dict[str, datetime] = {}


def _week_start(raw: str | None) -> datetime | None:
    """The week's Monday at midnight UTC (stored as the comparison's creation time, which the
    export writes back as its week); None when the row gives none; ValueError when not a Monday."""
    raw = (raw or "").strip()
    if not raw:
        return None
    start = _WEEK_STARTS.get(raw)
    if start is None:
        if not _ISO_DAY.fullmatch(raw):  # fromisoformat also reads 20210125 and 2021-W04-1
            raise ValueError(f"{raw} is not a date YYYY-MM-DD")
        day = date.fromisoformat(raw)
        if day.weekday() != 0:
            raise ValueError(f"{raw} is not a Monday")
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if len(_WEEK_STARTS) < 10_000:  # a dataset spans a few hundred weeks
            _WEEK_STARTS[raw] = start
    return start


# A plain decimal number, as Tournesol's exports write them. Python's float() also reads `1_0`,
# other scripts' digits and full-width ones, which no export holds and a JSON write refuses.
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _number(raw: str | None) -> float | None:
    text = (raw or "").strip()
    if not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def format_number(value: float) -> str:
    """Integers without a trailing `.0`, as in Tournesol's exports; others in shortest repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def week_date(moment: datetime) -> str:
    """Monday of the moment's (UTC) week, the public dataset's `week_date`."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    day: date = moment.date()
    return (day - timedelta(days=day.weekday())).isoformat()
