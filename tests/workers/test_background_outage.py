"""The worker's background loops (run recovery, sweep scheduler) while the database is out of
reach: one warning line per pass, no traceback, and they keep retrying (the scheduler's release
of its lease on stopping too); a fault that is not an
outage still logs its traceback."""

import logging
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from app.core.db import background_engine, log_background_failure
from app.core.errors import database_unavailable
from tests.conftest import reset_caches
from workers.tasks.maintenance import RunRecoveryLoop
from workers.tasks.sweeps import SchedulerThread

# Nothing listens on port 1: every connection is refused at once.
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


def outage_error() -> OperationalError:
    engine = background_engine(UNREACHABLE)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("port 1 accepted a connection")


def test_an_unreachable_database_is_told_from_a_wrong_statement(postgres_url: str) -> None:
    assert database_unavailable(outage_error())
    engine = background_engine(postgres_url)
    try:
        with pytest.raises(ProgrammingError) as wrong, engine.connect() as connection:
            connection.execute(text("SELECT * FROM no_such_table"))
    finally:
        engine.dispose()
    assert not database_unavailable(wrong.value)
    assert not database_unavailable(ValueError("no luck"))


def test_a_failed_pass_logs_one_line_in_an_outage_and_a_traceback_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.outage")
    with caplog.at_level(logging.INFO, logger="tests.outage"):
        log_background_failure(logger, "run recovery: pass failed", outage_error(), then="retrying")
        log_background_failure(
            logger, "run recovery: pass failed", ValueError("no luck"), then="retrying"
        )
    outage, fault = caplog.records
    assert outage.levelno == logging.WARNING and outage.exc_info is None
    assert outage.getMessage().startswith(
        "run recovery: pass failed: the database is unavailable (OperationalError: "
    )
    assert "\n" not in outage.getMessage()
    assert outage.getMessage().endswith("; retrying")
    assert fault.getMessage() == "run recovery: pass failed; retrying"
    assert fault.levelno == logging.ERROR and fault.exc_info is not None
    assert fault.exc_info[0] is ValueError


@pytest.mark.parametrize("loop", [RunRecoveryLoop, SchedulerThread])
def test_background_loops_warn_and_retry_while_the_database_is_down(
    loop: type[RunRecoveryLoop] | type[SchedulerThread],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("RUN_RECOVERY_INTERVAL_SECONDS", "0.05")
    monkeypatch.setenv("SWEEP_SCHEDULER_INTERVAL_SECONDS", "0.05")
    reset_caches()
    caplog.set_level(logging.INFO, logger="workers")
    running = loop()
    running.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            warned = [r for r in caplog.records if "database is unavailable" in r.getMessage()]
            if len(warned) >= 3:
                break
            time.sleep(0.05)
    finally:
        running.stop()
    assert len(warned) >= 3, [r.getMessage() for r in caplog.records]  # it keeps retrying
    passes = [r for r in caplog.records if r.name.startswith("workers.tasks")]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in passes), [
        (r.levelname, r.getMessage()) for r in passes
    ]
