"""Publishing a run: each criterion's final state and scores staged under the run's id in short
transactions, then every published pointer moved at once in one small transaction."""

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from app.core.config import get_settings
from app.core.db import BATCH_PAUSE_SECONDS

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
    """Store a state; it replaces the run's previous states of the same kind (checkpoint, or
    final) for the criterion.

    The new row goes in first and the older ones are deleted after, skipping any row another
    transaction holds: the previous owner of a criterion taken over may have been cut off in the
    middle of replacing that very checkpoint, and its transaction keeps the row locked until the
    server drops the dead connection (up to `POSTGRES_CONNECTION`'s 20 s). Waiting for it would
    hold the new owner's checkpoint, and so its lease renewal, for that long, and a lease shorter
    than the wait would hand the criterion over a second time. A row skipped here is deleted by
    the next save or by the publication; `latest_state` reads the newest row.
    """
    new_id = connection.execute(
        text(
            "INSERT INTO model_states (run_id, criterion, epoch, is_checkpoint, state, sha256,"
            " created_at) VALUES (:run, :criterion, :epoch, :checkpoint, :state, :sha, :now)"
            " RETURNING id"
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
    ).scalar_one()
    older = (
        "SELECT id FROM model_states WHERE run_id = :run AND criterion = :criterion"
        " AND is_checkpoint = :checkpoint AND id < :new"
    )
    if connection.dialect.name == "postgresql":
        older += " FOR UPDATE SKIP LOCKED"
    connection.execute(
        text(f"DELETE FROM model_states WHERE id IN ({older})"),
        {"run": run_id, "criterion": criterion, "checkpoint": is_checkpoint, "new": new_id},
    )


_SUCCEEDED_RUNS = "run_id IN (SELECT id FROM training_runs WHERE status = 'succeeded')"


def published_checkpoints_left(connection: Connection) -> bool:
    """Whether a run that succeeded still has a checkpoint (`delete_checkpoints` skipped it)."""
    found = connection.execute(
        text(f"SELECT 1 FROM model_states WHERE is_checkpoint AND {_SUCCEEDED_RUNS} LIMIT 1")
    ).first()
    return found is not None


def delete_checkpoints(connection: Connection, *, run_id: int | None = None) -> int:
    """Delete the checkpoints of the run `run_id` (it was just published), or of every run that
    succeeded; returns how many. Rows another transaction holds are skipped (see `save_state`:
    a cut-off worker's transaction may hold one for 20 s); run recovery deletes them later."""
    if run_id is not None:
        which, params = "run_id = :run", {"run": run_id}
    else:
        which, params = _SUCCEEDED_RUNS, {}
    rows = f"SELECT id FROM model_states WHERE is_checkpoint AND {which}"
    if connection.dialect.name == "postgresql":
        rows += " FOR UPDATE SKIP LOCKED"
    return int(
        connection.execute(text(f"DELETE FROM model_states WHERE id IN ({rows})"), params).rowcount
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


def _between_batches(engine: Engine, held: float) -> None:
    """After a batch that held SQLite's write lock for `held` seconds, leave it free as long (at
    least BATCH_PAUSE_SECONDS): the API's writers, queued meanwhile, then all get in before the
    next batch, rather than one per batch, and keep at least half of the lock's time however
    long the run's writes go on."""
    if engine.dialect.name == "sqlite":
        time.sleep(max(BATCH_PAUSE_SECONDS, held))


def score_batch_rows(engine: Engine) -> int:
    """Score rows written or deleted per transaction: on SQLite each such transaction holds the
    database's only write lock, which every API write then waits for, so batches are small; on
    PostgreSQL writers do not exclude each other, and a COPY chunk is the batch."""
    if engine.dialect.name == "sqlite":
        return get_settings().sqlite_score_batch_rows
    return COPY_CHUNK_ROWS


def stage(
    engine: Engine,
    run_id: int,
    output: CriterionOutput,
    *,
    fence: Callable[[Connection], None],
    clear_first: bool,
) -> None:
    """Store a criterion's final state and scores under the run's id, ahead of its publication.

    Nothing serves them yet: readers follow `published_runs`, which only the run's publication
    moves (`app.runs.fanout.publish_if_done`), for all its criteria in one transaction, so
    readers see the previous run's scores until it commits, then this run's, never a mix. So
    they are written in many short transactions (`score_batch_rows` rows each), each of which
    first calls `fence` (it raises LeaseLost once the criterion is no longer ours): a worker
    that lost the criterion writes no further batch. With `clear_first` (a later attempt of the
    criterion), what an earlier attempt left is deleted first, so the run ends with each score
    once.
    """
    batch = score_batch_rows(engine)

    def owned(connection: Connection) -> bool:
        fence(connection)
        return True

    if clear_first:
        for table in ("local_scores", "global_scores"):
            delete_in_batches(
                engine,
                table,
                "run_id = :run AND criterion_id = :criterion",
                {"run": run_id, "criterion": output.criterion_id},
                batch_rows=batch,
                before=owned,
            )
    with engine.begin() as connection:
        fence(connection)
        save_state(
            connection,
            run_id=run_id,
            criterion=output.criterion,
            epoch=output.epoch,
            state=output.state,
            is_checkpoint=False,
        )
    for table, names, columns in _score_tables(run_id, output):
        for start in range(0, len(columns[0]), batch):
            began = time.monotonic()
            with engine.begin() as connection:
                fence(connection)
                bulk_insert(connection, table, names, [c[start : start + batch] for c in columns])
            _between_batches(engine, time.monotonic() - began)


def delete_in_batches(
    engine: Engine,
    table: str,
    where: str,
    params: dict[str, Any],
    *,
    batch_rows: int,
    before: Callable[[Connection], bool] | None = None,
) -> int:
    """Delete the rows of `table` matching `where`, at most `batch_rows` per transaction; each
    transaction first asks `before`, and the deletion stops when it answers False. Returns the
    number of rows deleted."""
    if engine.dialect.name == "sqlite":
        statement = (
            f"DELETE FROM {table} WHERE rowid IN"
            f" (SELECT rowid FROM {table} WHERE {where} LIMIT :batch_rows)"
        )
    else:  # a TID scan per batch, however large the table
        statement = (
            f"DELETE FROM {table} WHERE ctid = ANY (ARRAY"
            f" (SELECT ctid FROM {table} WHERE {where} LIMIT :batch_rows))"
        )
    deleted = 0
    while True:
        began = time.monotonic()
        with engine.begin() as connection:
            if before is not None and not before(connection):
                return deleted
            count = connection.execute(
                text(statement), {**params, "batch_rows": batch_rows}
            ).rowcount
        deleted += count
        if count < batch_rows:
            return deleted
        _between_batches(engine, time.monotonic() - began)


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


def _score_tables(
    run_id: int, output: CriterionOutput
) -> list[tuple[str, tuple[str, ...], list[np.ndarray]]]:
    """The score rows of one criterion: (table, column names, columns) for each score table."""
    n_global = len(output.video_ids)
    n_local = len(output.local_scores)
    return [
        (
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
            [
                np.full(n_global, run_id, dtype=np.int64),
                np.full(n_global, output.criterion_id, dtype=np.int64),
                output.video_ids,
                output.global_scores,
                output.global_uncertainty,
                output.n_comparisons,
                output.n_contributors,
            ],
        ),
        (
            "local_scores",
            ("run_id", "criterion_id", "user_id", "video_id", "score", "uncertainty"),
            [
                np.full(n_local, run_id, dtype=np.int64),
                np.full(n_local, output.criterion_id, dtype=np.int64),
                output.local_user_ids,
                output.local_video_ids,
                output.local_scores,
                output.local_uncertainty,
            ],
        ),
    ]


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
