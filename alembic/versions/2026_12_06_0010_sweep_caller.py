"""Sweeps record the credential that submitted them (`caller`), so that a user's credential
steers only its own sweeps; sweeps stored before have none (only service credentials steer them).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("caller", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sweeps", "caller")
