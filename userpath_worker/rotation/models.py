from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from userpath_worker.db import Base, JSONDocument, utcnow


class StaleReason(enum.StrEnum):
    TOO_OLD = "too_old"  # created more than the maximum age ago (AWS Config's 90 days)
    UNUSED = "unused"  # not used, or never used since creation, for the unused period
    EXPIRING_SOON = "expiring_soon"  # expires_at falls within the expiring-soon window


class Reminder(Base):
    """One reminder to an organization's owners that a key needs rotating. Never holds a secret.

    ``due_at`` is the start of the reminder interval it belongs to, counted from the key's
    ``flagged_at``; the unique (api_key_id, due_at) pair is what makes concurrent passes record
    exactly one reminder per key per interval.
    """

    __tablename__ = "reminders"
    __table_args__ = (
        UniqueConstraint("api_key_id", "due_at"),
        # The reminders still to send, found without reading every reminder ever sent.
        Index(
            "ix_reminders_unclaimed",
            "id",
            sqlite_where=text("claimed_at IS NULL"),
            postgresql_where=text("claimed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    reasons: Mapped[list[str]] = mapped_column(JSONDocument)
    due_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # A delivery claims the row before it sends, so that only one delivery ever sends it.
    claimed_at: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    # When the owners' e-mail went out (USERPATH_SMTP_URL): a retry after the webhook refused it
    # does not e-mail them again.
    emailed_at: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))


class RotationPass(Base):
    """One completed rotation pass, for ``userpath status``: when it ran and what it changed."""

    __tablename__ = "rotation_passes"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    flagged: Mapped[int]
    cleared: Mapped[int]
    reminded: Mapped[int]
    expired: Mapped[int]
