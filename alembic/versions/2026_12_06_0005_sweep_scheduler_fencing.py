"""Sweep scheduler fencing: a lease epoch, and one frozen dataset per (sweep, seed) NULL included.

`scheduler_leases.epoch` is the fencing token every scheduler write checks. The unique
constraint `uq_sweep_dataset_seed` treated NULL seeds (a holdout sweep's live comparisons) as
distinct; it becomes a unique index over `coalesce(seed, -1)`, which both PostgreSQL and SQLite
enforce. Duplicates made before (two schedulers preparing one sweep) are merged first: the
oldest row is kept and the evaluations that pointed at a later copy point at it (each
evaluation keeps its own data and split fingerprints, so what it was trained on stays known).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    with op.batch_alter_table('scheduler_leases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('epoch', sa.Integer(), server_default='1', nullable=False))

    op.execute(
        "UPDATE sweep_evaluations SET dataset_id = ("
        " SELECT min(k.id) FROM sweep_datasets k JOIN sweep_datasets d"
        " ON k.sweep_id = d.sweep_id AND coalesce(k.seed, -1) = coalesce(d.seed, -1)"
        " WHERE d.id = sweep_evaluations.dataset_id"
        ") WHERE dataset_id IS NOT NULL"
    )
    op.execute(
        "DELETE FROM sweep_datasets WHERE id NOT IN ("
        " SELECT min(id) FROM sweep_datasets GROUP BY sweep_id, coalesce(seed, -1))"
    )

    if op.get_bind().dialect.name != 'sqlite':
        op.drop_constraint('uq_sweep_dataset_seed', 'sweep_datasets', type_='unique')
    # (SQLite keeps the old table constraint, which the index implies: dropping it means
    # rebuilding the table, which its evaluations' foreign keys forbid inside a transaction.)
    op.create_index(
        'uq_sweep_dataset_seed',
        'sweep_datasets',
        ['sweep_id', sa.text('coalesce(seed, -1)')],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index('uq_sweep_dataset_seed', table_name='sweep_datasets')
    if op.get_bind().dialect.name != 'sqlite':
        op.create_unique_constraint('uq_sweep_dataset_seed', 'sweep_datasets', ['sweep_id', 'seed'])
    with op.batch_alter_table('scheduler_leases', schema=None) as batch_op:
        batch_op.drop_column('epoch')
