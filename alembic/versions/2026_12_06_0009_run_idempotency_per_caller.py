"""Idempotency-Keys per caller: a run records the credential that asked for it, and a key is
unique per caller (`uq_training_runs_caller_idempotency_key`) rather than across every caller.

Runs stored before this have no caller: their keys are kept, but no caller's retry finds them
any more (a retry sent across the upgrade queues a run of its own).

SQLite cannot drop the table constraint UNIQUE (idempotency_key) of migration 0002 without
rebuilding the table, and dropping the old table would cascade-delete every run's criteria,
metrics and states (foreign keys are on, and cannot be turned off inside the migration's
transaction). So on SQLite the constrained column is renamed `retired_idempotency_key`, emptied,
and left unused, and `idempotency_key` is a new column holding the same keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The name PostgreSQL gave migration 0002's unnamed constraint.
POSTGRES_CONSTRAINT = "training_runs_idempotency_key_key"
INDEX = "uq_training_runs_caller_idempotency_key"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE training_runs RENAME COLUMN idempotency_key TO retired_idempotency_key"
        )
        op.add_column(
            "training_runs", sa.Column("idempotency_key", sa.String(length=200), nullable=True)
        )
        op.execute(
            "UPDATE training_runs SET idempotency_key = retired_idempotency_key,"
            " retired_idempotency_key = NULL WHERE retired_idempotency_key IS NOT NULL"
        )
    else:
        op.drop_constraint(POSTGRES_CONSTRAINT, "training_runs", type_="unique")
    op.add_column("training_runs", sa.Column("caller", sa.Text(), nullable=True))
    op.create_index(INDEX, "training_runs", ["caller", "idempotency_key"], unique=True)


def downgrade() -> None:
    # A key that several callers used cannot be unique across callers again: the oldest run
    # keeps it.
    op.execute(
        "UPDATE training_runs SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL"
        " AND id NOT IN (SELECT MIN(id) FROM training_runs"
        " WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key)"
    )
    op.drop_index(INDEX, table_name="training_runs")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "UPDATE training_runs SET retired_idempotency_key = idempotency_key"
            " WHERE idempotency_key IS NOT NULL"
        )
        op.execute("ALTER TABLE training_runs DROP COLUMN caller")
        op.execute("ALTER TABLE training_runs DROP COLUMN idempotency_key")
        op.execute(
            "ALTER TABLE training_runs RENAME COLUMN retired_idempotency_key TO idempotency_key"
        )
    else:
        op.drop_column("training_runs", "caller")
        op.create_unique_constraint(POSTGRES_CONSTRAINT, "training_runs", ["idempotency_key"])
