"""Verified webhooks: organizations' signing secrets (encrypted), and whether a stored webhook verified.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-22 09:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_secrets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("display", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_webhook_secrets_org_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_secrets")),
    )
    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_secrets_org_provider", ["org_id", "provider"], unique=False)
    # True: a webhook whose signature verified; false: a webhook of a provider without a secret;
    # null: not a webhook (track events carry no signature).
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("verified")
    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_secrets_org_provider")
    op.drop_table("webhook_secrets")
