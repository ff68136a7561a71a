"""The people who sign in, their one-time links, their sessions, and the sign-in throttle.

No token is stored: invitations and sessions keep the SHA-256 digest of theirs, accounts the
argon2id hash of their password, the throttle a digest of what it counts by.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from userpath_worker.db import Base, string_enum, utcnow
from userpath_worker.organizations.models import Role


class Purpose(enum.StrEnum):
    INVITE = "invite"  # someone joins an organization (and sets a first password if they have none)
    RESET = "reset"  # a member sets a new password


class Channel(enum.StrEnum):
    """How a link reached whoever opens it, and so what it may do to an account's password."""

    OPERATOR = "operator"  # printed by the CLI, for the operator to hand over
    EMAIL = "email"  # e-mailed to the address itself (USERPATH_SMTP_URL)
    INVITER = "inviter"  # shown to the inviting owner on the Members page (no SMTP server)

    @property
    def trusted(self) -> bool:
        """Whether the link proves the address: whoever opens it is the address's owner, as far as
        the operator or the mailbox can tell. A link shown to an inviter proves nothing."""
        return self is not Channel.INVITER


class Account(Base):
    """One per person (e-mail), whatever organizations they belong to (``members`` says which)."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # Through which kind of link the password was last set. INVITER: an owner of one organization
    # may have set it; the account then reaches only the organizations whose invitations it
    # accepted itself, until a trusted link sets a new one.
    password_channel: Mapped[Channel | None] = mapped_column(string_enum(Channel, "link_channel"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Invitation(Base):
    """A one-time link: single use, valid until ``expires_at``. An invitation (``role`` set) is
    pending until it is used, and grants nothing before: the member is added when it is accepted."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[Purpose] = mapped_column(string_enum(Purpose, "invitation_purpose"))
    role: Mapped[Role | None] = mapped_column(string_enum(Role, "member_role"))  # invitations only
    channel: Mapped[Channel] = mapped_column(string_enum(Channel, "link_channel"))
    invited_by: Mapped[str] = mapped_column(String(320))  # an owner's e-mail, or "operator"
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class WebSession(Base):
    """A signed-in browser. The cookie carries the token; this row its digest."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]


class SignInThrottle(Base):
    """Failed sign-ins counted by one key (an e-mail with a client address, an e-mail from browsers
    that never signed in to it, one such browser) in a window that starts at the first failure.

    The row is locked while a password is checked (``INSERT ... ON CONFLICT DO UPDATE``, then the
    update), so parallel attempts each see the failures before them.
    """

    __tablename__ = "sign_in_throttles"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of what is counted
    failures: Mapped[int] = mapped_column(default=0)
    window_started_at: Mapped[dt.datetime] = mapped_column(index=True)
