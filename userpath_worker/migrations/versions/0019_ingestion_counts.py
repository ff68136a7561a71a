"""Each key's counters, per hour: events stored, duplicates, and refusals by reason (the pages' figures).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingestion_counts",
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", "hour", "outcome", name=op.f("pk_ingestion_counts")),
    )
    with op.batch_alter_table("ingestion_counts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ingestion_counts_org_hour", ["org_id", "hour", "api_key_id", "outcome", "count"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ingestion_counts", schema=None) as batch_op:
        batch_op.drop_index("ix_ingestion_counts_org_hour")
    op.drop_table("ingestion_counts")
