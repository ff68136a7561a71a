"""Operations: a record of rotation passes, and which dead letters were replayed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 23:43:39.235006
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rotation_passes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flagged', sa.Integer(), nullable=False),
    sa.Column('cleared', sa.Integer(), nullable=False),
    sa.Column('reminded', sa.Integer(), nullable=False),
    sa.Column('expired', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rotation_passes'))
    )
    with op.batch_alter_table('rotation_passes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rotation_passes_finished_at'), ['finished_at'], unique=False)

    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_column('replayed_at')

    with op.batch_alter_table('rotation_passes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rotation_passes_finished_at'))

    op.drop_table('rotation_passes')
