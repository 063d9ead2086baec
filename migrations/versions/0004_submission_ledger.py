"""submission ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:32:56.625167
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('provider_submissions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('track_id', sa.Uuid(), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('workflow_run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('state', sa.Enum('sending', 'accepted', 'rejected', 'ambiguous', 'resolved', 'cancelled', 'finished', name='submissionstate', native_enum=False, length=16), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('urls', sa.JSON(), nullable=True),
    sa.Column('resolved_via', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.ForeignKeyConstraint(['track_id'], ['tracks.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'provider', 'number', 'workflow_run_id'),
    sa.UniqueConstraint('token')
    )
    with op.batch_alter_table('provider_submissions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_submissions_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_provider_submissions_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_provider_submissions_state'), ['state'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('provider_submissions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_submissions_state'))
        batch_op.drop_index(batch_op.f('ix_provider_submissions_run_id'))
        batch_op.drop_index(batch_op.f('ix_provider_submissions_job_id'))

    op.drop_table('provider_submissions')
