"""An organization's own rate limit at the edge (``userpath orgs set-limits``).

A table of its own that only the edge and the CLI read, so it runs online (schema.ONLINE_REVISIONS)
like 0017: this release's workers start on a database still waiting for it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 09:40:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organization_rate_limits",
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("events_per_second", sa.Integer(), nullable=False),
        sa.Column("burst", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_organization_rate_limits_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_organization_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("organization_rate_limits")
