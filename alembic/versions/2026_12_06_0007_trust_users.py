"""Trusted users: an operator's mark on users, and the count of trusted users a run trained with.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 08:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('trusted', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column('trust_changed_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('n_trusted', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('n_trusted')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('trust_changed_at')
        batch_op.drop_column('trusted')
