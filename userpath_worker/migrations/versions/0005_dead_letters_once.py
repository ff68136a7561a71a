"""Dead letters once: a deterministic key per message and item, unique.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dedup_key', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_dead_letters_dedup_key', ['dedup_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index('ix_dead_letters_dedup_key')
        batch_op.drop_column('dedup_key')
