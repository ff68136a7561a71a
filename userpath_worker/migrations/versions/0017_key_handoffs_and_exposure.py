"""A new key's one-time hand-off to the page that shows it; when and where a key was found leaked.

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-05 07:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_handoffs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_digest", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_key_handoffs_account_id_accounts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_key_handoffs_api_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_handoffs")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_key_handoffs_token_digest")),
    )
    with op.batch_alter_table("key_handoffs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_handoffs_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_key_handoffs_api_key_id"), ["api_key_id"], unique=False)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("exposed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("exposed_url", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("exposed_url")
        batch_op.drop_column("exposed_at")
    with op.batch_alter_table("key_handoffs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_handoffs_api_key_id"))
        batch_op.drop_index(batch_op.f("ix_key_handoffs_account_id"))
    op.drop_table("key_handoffs")
