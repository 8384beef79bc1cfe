"""Group commit of single writes on SQLite: writes queued meanwhile are committed together."""

# SQLite lets one transaction write at a time, so the single writes of one process wait for each
# other anyway. Written one transaction each, every write paid a thread hand-off, `BEGIN
# IMMEDIATE`, the write gate's hand-over, the names' look-up, the queued-run check and `COMMIT`;
# a group pays those once. Each request still gets the answer its write alone would have got, and
# only once the transaction holding its write has committed.
#
# Groups are led in arrival order: the first write to arrive when no group is being written
# leads the next group, which takes every write queued by then (itself first, up to MAX_GROUP);
# once it is written, the oldest write still queued leads the following one. A leader is one of
# the group's requests, not a background task, so nothing outlives the requests, and the queue
# is first in, first out: no write waits more than its turn.

from collections import deque
from collections.abc import Sequence

import anyio
from anyio import to_thread
from anyio.lowlevel import RunVar
from sqlmodel import Session

from app.comparisons import service
from app.comparisons.schemas import ComparisonCreate, ComparisonWriteResult
from app.core.db import get_engine, request_session
from app.runs.wakeups import PENDING_KEY

# The most writes one transaction takes: a group holds the write lock for as long as it writes,
# and the worker's writes (a run's scores) wait behind it.
MAX_GROUP = 64

Outcome = ComparisonWriteResult | Exception


def grouped() -> bool:
    """Whether single writes are committed in groups: on SQLite, where they take turns anyway.
    On PostgreSQL writers run side by side, and a write usually is one autocommit statement."""
    return get_engine().dialect.name == "sqlite"


class _Pending:
    """A write waiting for its group: woken when its outcome is known, or when it is to lead."""

    __slots__ = ("outcome", "payload", "woken")

    def __init__(self, payload: ComparisonCreate) -> None:
        self.payload = payload
        self.woken = anyio.Event()
        self.outcome: Outcome | None = None


class WriteGroups:
    """The single writes of one event loop, written in groups by one thread at a time."""

    def __init__(self) -> None:
        self._queue: deque[_Pending] = deque()
        self._leader: _Pending | None = None

    @property
    def writing(self) -> bool:
        """Whether a group is being written (or its leader is about to write it)."""
        return self._leader is not None

    @property
    def waiting(self) -> int:
        """How many writes wait for a group to take them."""
        return len(self._queue)

    async def write(self, payload: ComparisonCreate) -> ComparisonWriteResult:
        """Write `payload` with the writes queued beside it; its result once committed, or the
        exception it raised as a lone write would have (no other write of its group is lost)."""
        pending = _Pending(payload)
        self._queue.append(pending)
        if self._leader is None:
            self._leader = pending
        else:
            try:
                await pending.woken.wait()
            except BaseException:
                self._forget(pending)
                raise
        if pending.outcome is None:
            await self._lead(pending)
        outcome = pending.outcome
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    async def _lead(self, leader: _Pending) -> None:
        # The leader is the oldest write queued, so it is in the group it writes.
        group = [self._queue.popleft() for _ in range(min(MAX_GROUP, len(self._queue)))]
        outcomes: list[Outcome] | None = None
        try:
            outcomes = await to_thread.run_sync(write_group, [p.payload for p in group])
        finally:
            if outcomes is None:
                # Cancelled before the thread took the group: nothing was written; the others
                # go back to the head of the queue, in their order.
                self._queue.extendleft(reversed([p for p in group if p is not leader]))
            else:
                for pending, outcome in zip(group, outcomes, strict=True):
                    pending.outcome = outcome
                    pending.woken.set()
            self._hand_on()

    def _hand_on(self) -> None:
        self._leader = self._queue[0] if self._queue else None
        if self._leader is not None:
            self._leader.woken.set()

    def _forget(self, pending: _Pending) -> None:
        """A waiting write's request was cancelled: drop it if no group has taken it yet."""
        if pending in self._queue:
            self._queue.remove(pending)
            if self._leader is pending:
                self._hand_on()


_groups: RunVar[WriteGroups] = RunVar("single_write_groups")


def write_groups() -> WriteGroups:
    """This event loop's write groups (tests run several loops, each with its own)."""
    try:
        return _groups.get()
    except LookupError:
        groups = WriteGroups()
        _groups.set(groups)
        return groups


def write_group(payloads: Sequence[ComparisonCreate]) -> list[Outcome]:
    """Write `payloads` in one transaction, in their order; each one's result or exception.

    Several are written together (`write_comparisons_together`); when that raises, the
    transaction is rolled back and each write is made again on its own in a savepoint, so that a
    failing write fails alone, with the exception it raises when written alone. A transaction
    that cannot begin or commit fails every write of the group, and stores none of them."""
    session = request_session()
    try:
        try:
            session.connection()  # BEGIN IMMEDIATE, behind the process's write gate
            outcomes: list[Outcome]
            if len(payloads) == 1:
                # Alone: the write as it always was, its exception its own.
                try:
                    outcomes = [service.write_comparison(session, payload=payloads[0])]
                except Exception as exc:
                    return [exc]
            else:
                try:
                    outcomes = list(service.write_comparisons_together(session, payloads=payloads))
                except Exception:
                    session.rollback()
                    session.connection()
                    outcomes = _one_by_one(session, payloads)
            session.commit()
        except Exception as exc:
            return [exc] * len(payloads)
        return outcomes
    finally:
        session.close()


def _one_by_one(session: Session, payloads: Sequence[ComparisonCreate]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for payload in payloads:
        # A savepoint rolled back keeps the transaction's wake-ups; drop those of this write.
        woken = len(session.info.get(PENDING_KEY, ()))
        try:
            with session.begin_nested():
                outcomes.append(service.write_comparison(session, payload=payload))
        except Exception as exc:
            del session.info.get(PENDING_KEY, [])[woken:]
            outcomes.append(exc)
    return outcomes
