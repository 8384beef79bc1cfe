"""Streaming import of public-dataset CSVs (plain or inside an export zip) and streaming export."""

import csv
import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.comparisons.dataset_csv import (
    EXPORT_COLUMNS,
    TRUSTED_COLUMN,
    CsvHeaderError,
    RowError,
    format_number,
    parse_rows,
    week_date,
)
from app.comparisons.service import known_criteria
from app.comparisons.upsert import ComparisonRow, upsert_comparisons
from app.core.config import get_settings
from app.runs.freshness import comparisons_changed
from app.runs.trust import mark_users

MAX_KEPT_REJECTIONS = 1000


class ImportSourceError(ValueError):
    """The file cannot be read as comparisons (missing, not CSV, no comparisons.csv in the zip)."""


@dataclass
class ImportReport:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    trust_changed: int = 0  # users whose trust mark the `trusted` column set or removed
    rejections: list[RowError] = field(default_factory=list)

    def reject(self, error: RowError) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_KEPT_REJECTIONS:
            self.rejections.append(error)


class _CountingReader(io.RawIOBase):
    """Counts bytes read from the underlying (compressed) file, for progress reporting."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.on_read(len(data))
        return len(data)


def _comparisons_member(archive: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    for info in archive.infolist():
        if info.filename.rsplit("/", 1)[-1] == "comparisons.csv":
            return info
    raise ImportSourceError(f"{path}: the zip holds no comparisons.csv")


def _is_zip(path: Path) -> bool:
    """A zip, readable or not: by its name or its first bytes, not only by a readable directory
    (a damaged export is refused as such, not read as a CSV with a nonsense header)."""
    if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        return True
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


@contextmanager
def _archive(path: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except zipfile.BadZipFile as exc:
        raise ImportSourceError(f"cannot read {path}: {exc}") from exc


def source_size(path: Path) -> int:
    """Bytes of CSV text `open_comparisons` will read (uncompressed size for a zip)."""
    if _is_zip(path):
        with _archive(path) as archive:
            return _comparisons_member(archive, path).file_size
    return path.stat().st_size


@contextmanager
def open_comparisons(
    path: Path, on_read: Callable[[int], None] = lambda _: None
) -> Iterator[IO[str]]:
    """Text lines of a comparisons CSV, read from the file or from `comparisons.csv` in a zip."""
    if not path.is_file():
        raise ImportSourceError(f"{path}: no such file")
    if _is_zip(path):
        with (
            _archive(path) as archive,
            archive.open(_comparisons_member(archive, path)) as raw,
        ):
            yield _text(raw, on_read)
    else:
        with open(path, "rb") as raw:
            yield _text(raw, on_read)


def _text(raw: IO[bytes], on_read: Callable[[int], None]) -> IO[str]:
    counted = io.BufferedReader(_CountingReader(raw, on_read), buffer_size=1 << 20)
    return io.TextIOWrapper(counted, encoding="utf-8-sig", newline="")


def import_comparisons(
    engine: Engine,
    path: Path,
    *,
    batch_size: int = 10_000,
    strict: bool = False,
    on_read: Callable[[int], None] = lambda _: None,
) -> ImportReport:
    """Upsert every valid row, batch by batch (each batch its own transaction; re-running is safe).

    With `strict`, the whole file is validated first and nothing is written if any row is bad.
    An optional `trusted` column marks each row's user trusted or not (dataset_csv.parse_rows),
    in the same transaction as the batch that holds the user's rows.
    """
    with Session(engine) as session:
        criteria = known_criteria(session)
    default_max = get_settings().score_max
    report = ImportReport()
    if strict:
        with open_comparisons(path) as lines:
            for item in _parsed(path, lines, criteria, default_max, {}):
                if isinstance(item, RowError):
                    report.reject(item)
        if report.rejected:
            return report
    batch: list[ComparisonRow] = []
    marks: dict[str, bool] = {}  # filled by the parser as it reads, emptied by each flush
    with open_comparisons(path, on_read) as lines:
        for item in _parsed(path, lines, criteria, default_max, marks):
            if isinstance(item, RowError):
                report.reject(item)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                _flush(engine, batch, marks, report)
                batch = []
    _flush(engine, batch, marks, report)
    return report


def _parsed(
    path: Path, lines: IO[str], criteria: set[str], default_max: float, marks: dict[str, bool]
) -> Iterator[ComparisonRow | RowError]:
    try:
        yield from parse_rows(
            lines, criteria=criteria, default_score_max=default_max, trust_marks=marks
        )
    except CsvHeaderError as exc:
        raise ImportSourceError(f"{path}: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportSourceError(f"{path}: not a readable CSV ({exc})") from exc


def _flush(
    engine: Engine, batch: list[ComparisonRow], marks: dict[str, bool], report: ImportReport
) -> None:
    if not batch:
        return
    with Session(engine) as session:
        outcome = upsert_comparisons(session, rows=batch)
        comparisons_changed(
            session,
            criteria={row.criterion for row in batch},
            changed=outcome.inserted + outcome.updated,
        )
        # Every marked user has a row in this batch or an earlier one: the user exists now.
        report.trust_changed += mark_users(session, marks)
        marks.clear()
        session.commit()
    report.inserted += outcome.inserted
    report.updated += outcome.updated
    report.unchanged += outcome.unchanged


EXPORT_QUERY = """
    SELECT u.external_id, va.external_id, vb.external_id, c.name, cmp.score, cmp.score_max,
           cmp.created_at, u.trusted
    FROM comparisons cmp
    JOIN users u ON u.id = cmp.user_id
    JOIN videos va ON va.id = cmp.video_a_id
    JOIN videos vb ON vb.id = cmp.video_b_id
    JOIN criteria c ON c.id = cmp.criterion_id
    ORDER BY u.external_id{collate}, va.external_id{collate}, vb.external_id{collate},
        c.name{collate}
"""


# SQLite compares text byte by byte, which for UTF-8 is code-point order; PostgreSQL needs "C".
_CODE_POINT_ORDER = {"postgresql": ' COLLATE "C"', "sqlite": ""}


def export_comparisons(engine: Engine, directory: Path) -> int:
    """Write `comparisons.csv` in the public-dataset format; returns the number of rows.

    Rows come in code-point order of (user, video_a, video_b, criterion), not in storage order:
    an import of the file stores them in another order (each batch is written in key order), and
    only a canonical order makes export → import → export give the same bytes. When any user is
    trusted, a last `trusted` column (true/false) carries the marks, which the import reads."""
    from datetime import datetime

    from sqlalchemy import text

    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    with (
        open(directory / "comparisons.csv", "w", newline="", encoding="utf-8") as out,
        engine.connect() as connection,
    ):
        writer = csv.writer(out, lineterminator="\n")
        with_trust = bool(
            connection.execute(text("SELECT 1 FROM users WHERE trusted LIMIT 1")).first()
        )
        writer.writerow((*EXPORT_COLUMNS, TRUSTED_COLUMN) if with_trust else EXPORT_COLUMNS)
        result = connection.execution_options(stream_results=True, yield_per=10_000).execute(
            text(EXPORT_QUERY.format(collate=_CODE_POINT_ORDER[engine.dialect.name]))
        )
        for user, a, b, criterion, score, score_max, created_at, trusted in result:
            if isinstance(created_at, str):  # SQLite hands back text through raw SQL
                created_at = datetime.fromisoformat(created_at)
            row = (
                user,
                a,
                b,
                criterion,
                format_number(score),
                format_number(score_max),
                week_date(created_at),
            )
            writer.writerow((*row, "true" if trusted else "false") if with_trust else row)
            count += 1
    return count
