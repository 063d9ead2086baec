"""track renditions: mastered FLAC and MP3 files, true peak

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 18:20:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tracks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('true_peak_dbtp', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('renditions', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('renditions_state', sa.Enum('pending', 'ready', 'failed', name='renditionsstate', native_enum=False, length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tracks', schema=None) as batch_op:
        batch_op.drop_column('renditions_state')
        batch_op.drop_column('renditions')
        batch_op.drop_column('true_peak_dbtp')
