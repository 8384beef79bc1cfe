"""Comparison ids are 64-bit on PostgreSQL: every attempted upsert draws a sequence value (an
unchanged row of a re-import included), so a long-lived deployment could exhaust 2³¹. The column
change rewrites the table (it holds an exclusive lock meanwhile: about a second per million
rows). SQLite's INTEGER PRIMARY KEY is the 64-bit rowid already: nothing changes there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 18:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE comparisons ALTER COLUMN id TYPE bigint")
        op.execute("ALTER SEQUENCE comparisons_id_seq AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Refused by PostgreSQL if an id or the sequence already went beyond 2³¹ − 1.
        op.execute("ALTER SEQUENCE comparisons_id_seq AS integer")
        op.execute("ALTER TABLE comparisons ALTER COLUMN id TYPE integer")
