"""Publishing a run: scores staged per criterion, then every published pointer moved at once."""

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection

COPY_CHUNK_ROWS = 200_000


@dataclass(frozen=True)
class CriterionOutput:
    """What a run produced for one criterion, with database ids (not external ids)."""

    criterion_id: int
    criterion: str
    epoch: int
    state: bytes
    video_ids: np.ndarray
    global_scores: np.ndarray
    global_uncertainty: np.ndarray
    n_comparisons: np.ndarray
    n_contributors: np.ndarray
    local_user_ids: np.ndarray
    local_video_ids: np.ndarray
    local_scores: np.ndarray
    local_uncertainty: np.ndarray


def save_state(
    connection: Connection,
    *,
    run_id: int,
    criterion: str,
    epoch: int,
    state: bytes,
    is_checkpoint: bool,
) -> None:
    """Store a state; it replaces the run's previous state of the same kind (checkpoint, or
    final) for the criterion."""
    connection.execute(
        text(
            "DELETE FROM model_states WHERE run_id = :run AND criterion = :criterion"
            " AND is_checkpoint = :checkpoint"
        ),
        {"run": run_id, "criterion": criterion, "checkpoint": is_checkpoint},
    )
    connection.execute(
        text(
            "INSERT INTO model_states (run_id, criterion, epoch, is_checkpoint, state, sha256,"
            " created_at) VALUES (:run, :criterion, :epoch, :checkpoint, :state, :sha, :now)"
        ),
        {
            "run": run_id,
            "criterion": criterion,
            "epoch": epoch,
            "checkpoint": is_checkpoint,
            "state": state,
            "sha": hashlib.sha256(state).hexdigest(),
            "now": datetime.now(UTC),
        },
    )


def latest_state(
    connection: Connection, *, run_id: int, criterion: str, checkpoint: bool
) -> bytes | None:
    row = connection.execute(
        text(
            "SELECT state, sha256 FROM model_states WHERE run_id = :run AND criterion = :criterion"
            " AND is_checkpoint = :checkpoint ORDER BY id DESC LIMIT 1"
        ),
        {"run": run_id, "criterion": criterion, "checkpoint": checkpoint},
    ).first()
    if row is None:
        return None
    state = bytes(row[0])
    if hashlib.sha256(state).hexdigest() != row[1]:
        raise ValueError(f"run {run_id}: stored state of {criterion!r} is corrupt")
    return state


def published_state(connection: Connection, *, criterion: str) -> bytes | None:
    """The final state of the criterion's published run (the warm start of the next run)."""
    run_id = connection.execute(
        text(
            "SELECT p.run_id FROM published_runs p JOIN criteria c ON c.id = p.criterion_id"
            " WHERE c.name = :name"
        ),
        {"name": criterion},
    ).scalar()
    if run_id is None:
        return None
    return latest_state(connection, run_id=int(run_id), criterion=criterion, checkpoint=False)


def published_criteria(connection: Connection) -> list[str]:
    """Names of the criteria that have a published run."""
    rows = connection.execute(
        text("SELECT c.name FROM published_runs p JOIN criteria c ON c.id = p.criterion_id")
    )
    return sorted(str(name) for (name,) in rows)


def stage(connection: Connection, run_id: int, output: CriterionOutput) -> None:
    """Store a criterion's final state and write its scores under the run's id.

    Nothing serves them yet: readers follow `published_runs`, which only the run's publication
    moves (`app.services.fanout.publish_if_done`), for all its criteria in one transaction, so
    readers see the previous run's scores until it commits, then this run's, never a mix.
    Staging each criterion as it finishes also keeps the publishing transaction short.
    """
    save_state(
        connection,
        run_id=run_id,
        criterion=output.criterion,
        epoch=output.epoch,
        state=output.state,
        is_checkpoint=False,
    )
    _write_scores(connection, run_id, output)


def move_pointer(
    connection: Connection, run_id: int, criterion_id: int, snapshot_at: datetime
) -> bool:
    """Point the criterion at this run, unless its published run read newer comparisons (a
    slower, older run never replaces fresher scores); True when moved."""
    current = connection.execute(
        text(
            "SELECT r.snapshot_at FROM published_runs p JOIN training_runs r ON r.id = p.run_id"
            " WHERE p.criterion_id = :criterion"
        ),
        {"criterion": criterion_id},
    ).first()
    now = datetime.now(UTC)
    if current is None:
        connection.execute(
            text(
                "INSERT INTO published_runs (criterion_id, run_id, published_at)"
                " VALUES (:criterion, :run, :now)"
            ),
            {"criterion": criterion_id, "run": run_id, "now": now},
        )
        return True
    if current[0] is not None and aware(current[0]) > snapshot_at:
        return False
    connection.execute(
        text(
            "UPDATE published_runs SET run_id = :run, published_at = :now"
            " WHERE criterion_id = :criterion"
        ),
        {"criterion": criterion_id, "run": run_id, "now": now},
    )
    return True


def aware(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite hands timestamps back as text through raw SQL
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _write_scores(connection: Connection, run_id: int, output: CriterionOutput) -> None:
    n_global = len(output.video_ids)
    global_columns = [
        np.full(n_global, run_id, dtype=np.int64),
        np.full(n_global, output.criterion_id, dtype=np.int64),
        output.video_ids,
        output.global_scores,
        output.global_uncertainty,
        output.n_comparisons,
        output.n_contributors,
    ]
    n_local = len(output.local_scores)
    local_columns = [
        np.full(n_local, run_id, dtype=np.int64),
        np.full(n_local, output.criterion_id, dtype=np.int64),
        output.local_user_ids,
        output.local_video_ids,
        output.local_scores,
        output.local_uncertainty,
    ]
    bulk_insert(
        connection,
        "global_scores",
        (
            "run_id",
            "criterion_id",
            "video_id",
            "score",
            "uncertainty",
            "n_comparisons",
            "n_contributors",
        ),
        global_columns,
    )
    bulk_insert(
        connection,
        "local_scores",
        ("run_id", "criterion_id", "user_id", "video_id", "score", "uncertainty"),
        local_columns,
    )


def _rows(columns: Sequence[np.ndarray], start: int, stop: int) -> Iterator[tuple[Any, ...]]:
    # tolist() turns numpy scalars into Python ints and floats, which sqlite3 accepts.
    return zip(*(column[start:stop].tolist() for column in columns), strict=True)


def postgres_binary_copy(columns: Sequence[np.ndarray]) -> bytes:
    """The rows in PostgreSQL's binary COPY format, built by numpy without a Python loop.

    Integer columns go out as int4 and float columns as float8, the types of the score tables.
    """
    fields: list[tuple[str, str]] = [("n_fields", ">i2")]
    for index, column in enumerate(columns):
        fields.append((f"length_{index}", ">i4"))
        fields.append((f"value_{index}", ">i4" if column.dtype.kind in "iu" else ">f8"))
    rows = np.empty(len(columns[0]), dtype=np.dtype(fields))
    rows["n_fields"] = len(columns)
    for index, column in enumerate(columns):
        rows[f"length_{index}"] = 4 if column.dtype.kind in "iu" else 8
        rows[f"value_{index}"] = column
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return header + rows.tobytes() + (-1).to_bytes(2, "big", signed=True)


def bulk_insert(
    connection: Connection, table: str, names: Sequence[str], columns: Sequence[np.ndarray]
) -> None:
    """Binary COPY on PostgreSQL, chunked executemany on SQLite."""
    n_rows = len(columns[0]) if columns else 0
    if n_rows == 0:
        return
    column_list = ", ".join(names)
    if connection.dialect.name == "postgresql":
        raw: Any = connection.connection.driver_connection
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({column_list}) FROM STDIN WITH (FORMAT binary)") as copy,
        ):
            for start in range(0, n_rows, COPY_CHUNK_ROWS):
                chunk = [column[start : start + COPY_CHUNK_ROWS] for column in columns]
                payload = postgres_binary_copy(chunk)
                # One header at the start and one trailer at the end of the whole stream.
                if start > 0:
                    payload = payload[19:]
                if start + COPY_CHUNK_ROWS < n_rows:
                    payload = payload[:-2]
                copy.write(payload)
        return
    placeholders = ", ".join("?" for _ in names)
    raw_sqlite: Any = connection.connection.driver_connection
    cursor = raw_sqlite.cursor()
    try:
        for start in range(0, n_rows, COPY_CHUNK_ROWS):
            cursor.executemany(
                f"INSERT INTO {table} ({column_list}) VALUES ({placeholders})",
                _rows(columns, start, start + COPY_CHUNK_ROWS),
            )
    finally:
        cursor.close()
