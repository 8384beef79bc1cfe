"""What every leased row shares (runs, their criteria, sweep evaluations): the values a claim
writes, the condition that fences each write of the row's holder, and which workers may take it."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, true


def claimed_values(
    table: Table, *, owner: str, lease_seconds: float, now: datetime
) -> dict[str, Any]:
    """A claim's values: running, the next attempt, held by `owner` for `lease_seconds`."""
    return {
        "status": "running",
        "attempt": table.c.attempt + 1,
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "heartbeat_at": now,
    }


def held_by(table: Table, row_id: int, owner: str, attempt: int) -> ColumnElement[bool]:
    """The row still runs under this holder's lease and attempt: a write that also matches this
    is the holder's, and no one else's."""
    return and_(
        table.c.id == row_id,
        table.c.status == "running",
        table.c.lease_owner == owner,
        table.c.attempt == attempt,
    )


def trainable_on(gpu: bool, settings: Any) -> ColumnElement[bool]:
    """Rows whose training `settings` (a JSON column of LicchaviConfig) a worker may run: any, on
    a worker that reads the `gpu` queue; on any other, none that ask for CUDA, which would fail
    there (they wait for a GPU worker instead)."""
    if gpu:
        return true()
    return func.coalesce(settings["device"].as_string(), "auto") != "cuda"
