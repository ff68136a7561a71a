from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import JSON, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from userpath_worker.db import Base, string_enum, utcnow
from userpath_worker.keys.tokens import Environment


class KeyStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRING = "expiring"  # rolled, still accepted until its grace period ends
    EXPIRED = "expired"
    DELETED = "deleted"


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        # A name is unique among the org's current keys; a rolled key hands its name on to its
        # replacement, and deleted keys free theirs.
        Index(
            "uq_api_keys_org_current_name",
            "org_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL AND rolled_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL AND rolled_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    environment: Mapped[Environment] = mapped_column(string_enum(Environment, "key_environment"))
    # SHA-256 (or HMAC-SHA-256 with the pepper) of the whole key, hex; the key itself is never kept.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    display: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    expires_at: Mapped[dt.datetime | None]
    deleted_at: Mapped[dt.datetime | None]
    rolled_at: Mapped[dt.datetime | None]
    replaced_by_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    # Set by the rotation pass (userpath_worker.rotation): when an active key was first found
    # stale, and why; cleared when the key is rolled or deleted, or stops being stale.
    flagged_at: Mapped[dt.datetime | None]
    flag_reasons: Mapped[list[str] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")  # None is SQL NULL
    )
    # When the rotation pass enforced the expiry (an audit row "key.expired" says why).
    expired_at: Mapped[dt.datetime | None]
    # What the key may send (keys.scopes): e.g. ["track", "webhooks:stripe"]; NULL for everything,
    # as every key made before scopes existed. Set at creation, kept by a roll, never changed.
    scopes: Mapped[list[str] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    )

    # When the key was reported leaked (a secret-scanning report, or ``keys report-leak``), and the
    # public place where it was found, if known (keys.exposure). Never cleared: it stays history.
    exposed_at: Mapped[dt.datetime | None]
    exposed_url: Mapped[str | None] = mapped_column(String(2000))

    def status(self, now: dt.datetime | None = None) -> KeyStatus:
        return key_status(self.deleted_at, self.expired_at, self.expires_at, self.rolled_at, now or utcnow())


def key_status(
    deleted_at: dt.datetime | None,
    expired_at: dt.datetime | None,
    expires_at: dt.datetime | None,
    rolled_at: dt.datetime | None,
    now: dt.datetime,
) -> KeyStatus:
    """A key's status at ``now`` from its columns (``ApiKey.status``, and lists read as plain rows)."""
    if deleted_at is not None:
        return KeyStatus.DELETED
    if expired_at is not None or (expires_at is not None and expires_at <= now):
        return KeyStatus.EXPIRED
    if rolled_at is not None:
        return KeyStatus.EXPIRING
    return KeyStatus.ACTIVE


class KeyHandoff(Base):
    """A new key on its way from the POST that made it to the one page that shows it (keys.handoff).

    The key is kept encrypted under a key derived from the hand-off's token, and the token is not
    kept (its digest is): neither this row nor the browser's cookie alone can give the key back.
    The page that shows it deletes the row; an unclaimed one is useless after ``expires_at``.
    """

    __tablename__ = "key_handoffs"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[dt.datetime]
