"""Migration 0009 on PostgreSQL and SQLite: runs stored before it keep their keys, criteria and
metrics, and afterwards a key is unique per caller only."""

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from alembic import command
from app.core.db import make_engine
from app.runs import service
from app.runs.schemas import RunCreate
from tests.cli.test_commands import empty_postgres  # noqa: F401  (a fixture)
from tests.identity.test_api_key_migration import unmigrated_url, upgrade  # noqa: F401
from tests.sweeps.test_sweep_fencing import alembic_config

COLUMNS = (
    "status, trigger, scope, solver, config, config_hash, code_version, progress, epoch,"
    " max_epochs, attempt, cancel_requested, warm_start, not_before, created_at, request_hash,"
    " idempotency_key"
)
VALUES = (
    "'succeeded', 'manual', '', 'converged', '{}', 'h', 'v', 1.0, 3, 3, 1, false, true,"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'r', :key"
)
RUN = f"INSERT INTO training_runs ({COLUMNS}) VALUES ({VALUES})"
CALLERS_RUN = f"INSERT INTO training_runs ({COLUMNS}, caller) VALUES ({VALUES}, :caller)"


def test_runs_made_before_the_migration_keep_their_rows_and_keys(
    unmigrated_url: str,  # noqa: F811  (the fixture)
) -> None:
    upgrade(unmigrated_url, "0008")
    engine = make_engine(unmigrated_url)
    try:
        with engine.begin() as connection:
            for key in ("shared-X", None):
                connection.execute(sa.text(RUN), {"key": key})
            connection.execute(
                sa.text(
                    "INSERT INTO training_metrics (run_id, criterion, epoch, name, value, attempt)"
                    " VALUES (1, 'reliability', 3, 'fit', 0.5, 1)"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO training_run_criteria (run_id, criterion, position, status,"
                    " attempt, progress, epoch) VALUES (1, 'reliability', 0, 'trained', 1, 1, 3)"
                )
            )
        upgrade(unmigrated_url, "head")
        with engine.connect() as connection:
            runs = connection.execute(
                sa.text("SELECT id, caller, idempotency_key FROM training_runs ORDER BY id")
            ).all()
            kept = [
                connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("training_metrics", "training_run_criteria")
            ]
            # The partial index of queued auto runs survives too.
            indexes = {
                index["name"] for index in sa.inspect(connection).get_indexes("training_runs")
            }
        assert [tuple(run) for run in runs] == [(1, None, "shared-X"), (2, None, None)]
        assert kept == [1, 1]
        assert {"uq_training_runs_one_queued_auto", "uq_training_runs_caller_idempotency_key"} <= (
            indexes
        )

        # The old key is nobody's now; two callers may each use it once.
        payload = RunCreate(config={"epochs": 5})
        with Session(engine) as session:
            made = [
                service.create_run(session, payload=payload, caller=caller, idempotency_key=key)
                for caller, key in (
                    ("key:1", "shared-X"),
                    ("key:2", "shared-X"),
                    ("key:1", "shared-X"),
                )
            ]
            session.commit()
            assert [created for _run, created in made] == [True, True, False]
            assert made[0][0].id == made[2][0].id != made[1][0].id
            # The index holds a caller to each key once.
            with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
                session.execute(sa.text(CALLERS_RUN), {"key": "shared-X", "caller": "key:2"})

        # Downgraded, a key is unique across callers again: the oldest run keeps it.
        command.downgrade(alembic_config(unmigrated_url), "0008")
        with engine.connect() as connection:
            keys = connection.execute(
                sa.text("SELECT id, idempotency_key FROM training_runs ORDER BY id")
            ).all()
        assert [tuple(row) for row in keys] == [(1, "shared-X"), (2, None), (3, None), (4, None)]
        upgrade(unmigrated_url, "head")
    finally:
        engine.dispose()
