"""Request ids on runs and sweeps; worker heartbeats say which host, queues and work.

`training_runs.request_id` and `sweeps.request_id` hold the X-Request-ID of the API request that
created the row, so the worker that claims it logs under the same id. Each worker process now
writes its own heartbeat row with its host name, queues, start time and current run or
evaluation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 08:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("request_id", sa.String(length=128), nullable=True))
    op.add_column("sweeps", sa.Column("request_id", sa.String(length=128), nullable=True))
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hostname", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("queues", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("current_run_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("current_evaluation_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.drop_column("current_evaluation_id")
        batch_op.drop_column("current_run_id")
        batch_op.drop_column("started_at")
        batch_op.drop_column("queues")
        batch_op.drop_column("hostname")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("request_id")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("request_id")
