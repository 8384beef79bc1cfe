"""Database engine, and the request session that commits on success and rolls back on error."""

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings, get_settings
from app.core.errors import database_unavailable, public_error

# An execution option: the transactions of a connection carrying it only read (see `read_only`).
READ_ONLY = "licchavi_read_only"
NO_WAIT = "licchavi_no_wait"
# libpq settings of every PostgreSQL connection (the same keys in the URL's query win). A server
# gone silent (its host, or ours, cut off the network) fails the connection within about 20 s
# rather than the kernel's 2 hours: keepalive probes while we wait for an answer, and
# tcp_user_timeout while what we sent goes unacknowledged. A worker stuck waiting would otherwise
# never learn that its run was taken over.
POSTGRES_CONNECTION = {
    # A host that accepts the connection but never answers (a hung server, a half-open proxy)
    # fails it after this many seconds instead of holding the caller for ever.
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}
# How often a SQLite writer tries again for the write lock another process holds.
LOCK_POLL_SECONDS = 0.001
# What a process writing many batches in a row waits after each, at least, so that a writer of
# another process, trying every LOCK_POLL_SECONDS, takes the lock in between.
BATCH_PAUSE_SECONDS = 2 * LOCK_POLL_SECONDS


def postgres_connect_args(url: str) -> dict[str, Any]:
    """POSTGRES_CONNECTION's settings that `url`'s query does not set itself: every connection
    to PostgreSQL (ours, Optuna's) notices a dead peer within 20 s."""
    query = make_url(url).query
    return {name: value for name, value in POSTGRES_CONNECTION.items() if name not in query}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for its dialect: SQLite gets WAL, a bounded busy timeout, immediate
    transactions for writers and lock-free snapshots for readers, UTC-aware timestamps."""
    if url.startswith("sqlite"):
        timeout = get_settings().sqlite_busy_timeout_seconds
        connect_args = {
            "check_same_thread": False,
            "timeout": timeout,
            "factory": _SQLiteConnection,
        }
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        _configure_sqlite(engine, timeout=timeout)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # No pre-ping: it costs a round trip per request; a connection found dead is discarded and the
    # pool invalidated by SQLAlchemy on the first error instead.
    kwargs.setdefault("pool_recycle", 1800)
    kwargs["connect_args"] = {**postgres_connect_args(url), **kwargs.get("connect_args", {})}
    engine = create_engine(url, **kwargs)
    _configure_postgres(engine)
    return engine


# Set in a pooled connection's `info` once its session makes only custom plans.
CUSTOM_PLANS_ONLY = "licchavi_custom_plans_only"


def _configure_postgres(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Prepared statements are planned afresh on each execution, never on a generic plan
        # cached when the tables were small: planned as unprepared statements are. Those psycopg
        # prepares by itself (after 5 runs) are then never stuck on a stale plan, and the one we
        # prepare on purpose (app/comparisons/upsert.py) saves its parsing, not its planning.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_connection.commit()
        record.info[CUSTOM_PLANS_ONLY] = True


# One write gate per SQLite database per process (see `_configure_sqlite`). A forked child starts
# with none held, whatever its parent's threads held when it forked.
_write_gates: "dict[str, threading.Lock]" = {}
os.register_at_fork(after_in_child=_write_gates.clear)


class _SQLiteConnection(sqlite3.Connection):
    """A SQLite connection that begins its own transactions: deferred when they only read,
    immediate behind its process's write gate when they may write; the gate is handed back when
    the transaction ends, however it ends (commit, rollback, the pool's reset, close)."""

    gate_key = ""
    gate_timeout = 0.0
    # Set by the engine's "begin" event for the transaction about to begin.
    reads_only = False
    no_wait = False
    gate: "threading.Lock | None" = None
    # The busy timeout SQLite now applies on this connection, in ms.
    busy_ms = 0

    def _busy_timeout(self, ms: int) -> None:
        """Set SQLite's busy timeout, with no statement when it already is `ms`."""
        if self.busy_ms != ms:
            self.execute(f"PRAGMA busy_timeout={ms}")
            self.busy_ms = ms

    def begin(self) -> None:
        if self.reads_only:
            # A deferred transaction reads a WAL snapshot and never takes the write lock, so a
            # reader neither waits for writers nor makes them wait. Its rare waits (a WAL being
            # recovered or reset) are left to SQLite's busy handler.
            self._busy_timeout(int(self.gate_timeout * 1000))
            self.execute("BEGIN")
            return
        gate = _write_gates.setdefault(self.gate_key, threading.Lock())
        acquired = (
            gate.acquire(blocking=False)
            if self.no_wait
            else gate.acquire(timeout=self.gate_timeout)
        )
        if not acquired:
            raise sqlite3.OperationalError("database is locked")
        self.gate = gate
        try:
            # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY
            # when another writer committed meanwhile; taking the write lock up front makes it
            # wait instead. The wait is ours, not SQLite's busy handler: see `_begin_immediate`.
            # The busy timeout stays 0 after BEGIN IMMEDIATE: a WAL transaction holding the write
            # lock never waits for another lock (its commit appends to the WAL; the checkpoint
            # after it is passive), so setting it back would cost two statements a write for
            # nothing. The next reader on this connection sets it back (see above).
            self._busy_timeout(0)
            self._begin_immediate(0.0 if self.no_wait else self.gate_timeout)
        except BaseException:
            self._release_gate()
            raise

    def _begin_immediate(self, timeout: float) -> None:
        """BEGIN IMMEDIATE, retried every millisecond while another process holds the write lock,
        for up to `timeout` seconds. SQLite's busy handler sleeps 1, 2, 5, … up to 100 ms between
        tries: a writer asleep in it missed the gaps between another process's short
        transactions (a run storing its scores in batches), and the writers of its own process
        queued behind it at the gate all that time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(LOCK_POLL_SECONDS)

    def _release_gate(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release_gate()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release_gate()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_gate()


def _configure_sqlite(engine: Engine, *, timeout: float) -> None:
    utc_timestamps(engine)
    # SQLite lets one transaction write at a time. Threads of one process queue for it on a lock
    # (the write gate) rather than in SQLite's busy handler, which polls with sleeps growing to
    # 100 ms: under many writers those sleeps, not the writes, made the latency. Other processes
    # (the worker beside the API) still meet in the busy handler. Both waits are bounded by
    # `timeout`; one that runs out raises "database is locked".
    gate_key = str(engine.url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        dbapi_connection.gate_key = gate_key
        dbapi_connection.gate_timeout = timeout
        dbapi_connection.busy_ms = int(timeout * 1000)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        dbapi_connection = connection.connection.dbapi_connection
        dbapi_connection.reads_only = bool(options.get(READ_ONLY))
        dbapi_connection.no_wait = bool(options.get(NO_WAIT))

    # The dialect's own BEGIN does nothing on pysqlite; ours runs where SQLAlchemy expects the
    # DBAPI to begin, so that a lock wait that runs out is reported as any database error is.
    dialect: Any = engine.dialect
    dialect.do_begin = lambda proxied: proxied.dbapi_connection.begin()


class _UtcDateTime(sqlite.DATETIME):
    """SQLite keeps a timestamp as text without an offset: stored in UTC, read back as UTC, as
    PostgreSQL's `timestamptz` is."""

    def bind_processor(self, dialect: Any) -> Any:
        process = super().bind_processor(dialect)

        def bind(value: Any) -> Any:
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(UTC)
            return process(value) if process else value

        return bind

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        process = super().result_processor(dialect, coltype)

        def result(value: Any) -> Any:
            value = process(value) if process else value
            if isinstance(value, datetime) and value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value

        return result


def utc_timestamps(engine: Engine) -> None:
    """Make `engine` (SQLite) read every timestamp column back timezone-aware, in UTC."""
    dialect: Any = engine.dialect
    dialect.colspecs = {**dialect.colspecs, DateTime: _UtcDateTime}


@lru_cache(maxsize=16)  # one per engine: building it costs as much as a small query
def read_only(engine: Engine) -> Engine:
    """`engine` for transactions that only read: on SQLite they take no write lock (a write in
    one fails when another writer is busy); elsewhere nothing changes."""
    return engine.execution_options(**{READ_ONLY: True})


@lru_cache(maxsize=16)
def without_waiting(engine: Engine) -> Engine:
    """`engine` for writes that would rather not happen than wait: on SQLite a write lock held
    elsewhere makes `begin` fail at once ("database is locked"); elsewhere nothing changes."""
    return engine.execution_options(**{NO_WAIT: True})


def is_read_only(session: Session) -> bool:
    """Whether the session is bound to a `read_only` engine."""
    return bool(session.get_bind().get_execution_options().get(READ_ONLY))


def log_background_failure(
    logger: logging.Logger, failed: str, exc: BaseException, *, then: str
) -> None:
    """Log what a background loop failed to do (`failed`) and what follows (`then`): one
    warning line while the database is unavailable (a traceback on every pass would bury the
    log for as long as the outage lasts), the traceback for anything else."""
    if database_unavailable(exc):
        logger.warning("%s: the database is unavailable (%s); %s", failed, public_error(exc), then)
    else:
        logger.error("%s; %s", failed, then, exc_info=exc)


def background_engine(url: str) -> Engine:
    """An engine of its own for a background thread of a worker's main process: pool processes
    are forked from that process and must never share the process-wide engine's connections."""
    if url.startswith("sqlite"):
        return make_engine(url)
    return make_engine(url, pool_size=1, max_overflow=1)


@lru_cache
def _engine_for(url: str) -> Engine:
    return make_engine(url)


# The engine `get_engine` last returned and the settings it was for: each request asks for the
# engine, and working it out again (the data directory's mkdir, the SQLite path's realpath) cost
# syscalls on every write.
_latest: tuple[Settings, Engine] | None = None


def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    global _latest
    settings = get_settings()
    latest = _latest
    if latest is not None and latest[0] is settings:
        return latest[1]
    settings.ensure_data_dir()
    engine = _engine_for(settings.resolved_database_url)
    _latest = (settings, engine)
    return engine


def dispose_engine(*, close: bool = True) -> None:
    """Forget the pooled engine (after a fork, or when settings change in tests).

    In a forked child pass `close=False`: closing an inherited connection would end the parent's
    session on the server too; the child just drops its references and opens its own.
    """
    global _latest
    if _engine_for.cache_info().currsize:
        get_engine().dispose(close=close)
    _engine_for.cache_clear()
    _latest = None


@contextlib.asynccontextmanager
async def request_transaction(*, reads_only: bool = False) -> AsyncIterator[Session]:
    """A request session that commits when the block ends normally and rolls back when it raises.

    Async so that opening it costs no thread hop (a Session connects only when first used), and
    a request that never touches the database pays nothing; commit and rollback, which do I/O,
    run in the threadpool. `reads_only`: see `read_only`.
    """
    session = request_session(reads_only=reads_only)
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        # The transaction is over, so handing the connection back to the pool needs no I/O.
        session.close()


# Methods that never change anything (RFC 9110, section 9.2.1): their sessions only read.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_session(request: Request) -> AsyncIterator[Session]:
    """Request session dependency: commit when the handler returns, roll back when it raises."""
    async with request_transaction(reads_only=request.method in SAFE_METHODS) as session:
        yield session


_REQUEST_SESSION = "licchavi_request_session"


def request_session(*, reads_only: bool = False) -> Session:
    """A session as `get_session` opens it (its owner commits or rolls back, then closes it)."""
    engine = get_engine()
    session = Session(read_only(engine) if reads_only else engine, expire_on_commit=False)
    session.info[_REQUEST_SESSION] = True
    return session


def is_request_session(session: Session) -> bool:
    """True for a session `get_session` opened, which commits when the request succeeds."""
    return bool(session.info.get(_REQUEST_SESSION))


def commit_request(session: Session) -> None:
    """Commit the request session from the thread that wrote, sparing `get_session` the thread
    hop of its own commit. A session the request dependency did not open (one a test or a caller
    manages) is left to its owner."""
    if session.info.get(_REQUEST_SESSION):
        session.commit()


# scope="function": commit before the response is sent, so a 2xx always means the data is stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
