"""provider webhook deliveries seen: a signed delivery is accepted once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 17:50:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'provider_webhook_deliveries',
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('provider', sa.String(length=32), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('digest'),
    )
    op.create_index(
        op.f('ix_provider_webhook_deliveries_received_at'),
        'provider_webhook_deliveries',
        ['received_at'],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f('ix_provider_webhook_deliveries_received_at'),
        table_name='provider_webhook_deliveries',
    )
    op.drop_table('provider_webhook_deliveries')
