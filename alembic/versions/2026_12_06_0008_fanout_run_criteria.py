"""Criteria fan out: a run's criteria are rows of their own, claimed and trained by any worker.

`training_run_criteria` holds one row per criterion of a run, with its own lease, attempt,
progress and outcome; the worker that finishes the last one publishes the run.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 08:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('training_run_criteria',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('criterion', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('trained_by', sa.String(length=200), nullable=True),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('max_epochs', sa.Integer(), nullable=True),
    sa.Column('data_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('n_comparisons', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(
        "status IN ('queued', 'running', 'trained', 'withdrawn', 'skipped', 'failed',"
        " 'cancelled')",
        name='ck_training_run_criterion_status',
    ),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'criterion', name='uq_training_run_criterion'),
    )
    with op.batch_alter_table('training_run_criteria', schema=None) as batch_op:
        batch_op.create_index(
            'ix_training_run_criteria_status', ['status', 'run_id', 'position'], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table('training_run_criteria', schema=None) as batch_op:
        batch_op.drop_index('ix_training_run_criteria_status')
    op.drop_table('training_run_criteria')
