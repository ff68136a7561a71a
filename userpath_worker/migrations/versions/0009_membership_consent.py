"""Membership with consent: pending invitations with their role and channel, the channel of each
account's password, and a sign-in throttle counted under row locks.

Existing data: an unused invitation link was shown to the inviting owner unless the CLI printed it,
and nothing recorded which; it is taken as shown to the inviter (the cautious reading: it sets a
first password only for an e-mail no other organization knows). Reset links were only ever printed
by the CLI; who invited was not kept ("operator"). Passwords set before are taken as set through a
trusted link. Members added by earlier invitations stay members. Failed sign-ins counted so far are
dropped.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-29 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ROLE = sa.Enum("owner", "admin", "member", name="member_role", native_enum=False, create_constraint=True, length=16)


def channel() -> sa.Enum:
    return sa.Enum(
        "operator", "email", "inviter", name="link_channel", native_enum=False, create_constraint=True, length=16
    )


def upgrade() -> None:
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", ROLE, nullable=True))
        batch_op.add_column(sa.Column("channel", channel(), nullable=True))
        batch_op.add_column(sa.Column("invited_by", sa.String(length=320), nullable=True))
    op.execute(
        "UPDATE invitations SET role = COALESCE((SELECT members.role FROM members"
        " WHERE members.org_id = invitations.org_id AND members.email = invitations.email), 'member')"
        " WHERE purpose = 'invite'"
    )
    op.execute("UPDATE invitations SET channel = CASE WHEN purpose = 'reset' THEN 'operator' ELSE 'inviter' END")
    op.execute("UPDATE invitations SET invited_by = 'operator'")
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.alter_column("channel", existing_type=channel(), nullable=False)
        batch_op.alter_column("invited_by", existing_type=sa.String(length=320), nullable=False)

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_channel", channel(), nullable=True))
    op.execute("UPDATE accounts SET password_channel = 'operator' WHERE password_hash IS NOT NULL")

    op.create_table(
        "sign_in_throttles",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sign_in_throttles")),
    )
    with op.batch_alter_table("sign_in_throttles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sign_in_throttles_window_started_at"), ["window_started_at"], unique=False)
    with op.batch_alter_table("sign_in_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sign_in_failures_failed_at"))
        batch_op.drop_index("ix_sign_in_failures_email_failed_at")
        batch_op.drop_index("ix_sign_in_failures_client_address_failed_at")
    op.drop_table("sign_in_failures")


def downgrade() -> None:
    op.create_table(
        "sign_in_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_failures")),
    )
    with op.batch_alter_table("sign_in_failures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sign_in_failures_client_address_failed_at", ["client_address", "failed_at"], unique=False
        )
        batch_op.create_index("ix_sign_in_failures_email_failed_at", ["email", "failed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sign_in_failures_failed_at"), ["failed_at"], unique=False)
    with op.batch_alter_table("sign_in_throttles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sign_in_throttles_window_started_at"))
    op.drop_table("sign_in_throttles")
    # The enum columns' CHECK constraints first: SQLite's copy of the table would keep them otherwise.
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_accounts_link_channel"), type_="check")
        batch_op.drop_column("password_channel")
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_invitations_link_channel"), type_="check")
        batch_op.drop_constraint(op.f("ck_invitations_member_role"), type_="check")
        batch_op.drop_column("invited_by")
        batch_op.drop_column("channel")
        batch_op.drop_column("role")
