from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from userpath_worker.db import Base, BigId


class Reason(enum.StrEnum):
    """Why a message or an event was not stored. Stored as text so new reasons need no migration."""

    MALFORMED_KEY = "malformed_key"
    BAD_CHECKSUM = "bad_checksum"
    UNKNOWN_KEY = "unknown_key"
    DELETED_KEY = "deleted_key"
    EXPIRED_KEY = "expired_key"
    SCOPE_DENIED = "scope_denied"  # a key whose scopes do not cover the message's source (or provider)
    INVALID_ENVELOPE = "invalid_envelope"
    INVALID_EVENT = "invalid_event"
    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"  # not JSON, or a refused content type such as pickle
    UNKNOWN_TASK = "unknown_task"
    UNSIGNED_WEBHOOK = "unsigned_webhook"  # no signature, from a provider the organization has a secret for
    BAD_SIGNATURE = "bad_signature"  # a signature that does not verify, or outside the tolerance
    INTERNAL_ERROR = "internal_error"  # a bug of ours; the message is kept, and replayed after the fix


class DeadLetter(Base):
    """Something that arrived and was not stored, with the reason. The key is never in it."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_org_received", "org_id", "received_at"),
        Index("ix_dead_letters_dedup_key", "dedup_key", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int | None]
    api_key_id: Mapped[int | None]
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    queue: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[dt.datetime]
    # The message or event with its API key replaced by the key's display form.
    payload: Mapped[dict[str, Any] | None]
    # A digest of the message's identity and the item's place in it: a redelivered message
    # finds its dead letters already there (ON CONFLICT DO NOTHING) instead of adding twins.
    dedup_key: Mapped[str | None] = mapped_column(String(64))
    # Set when ``userpath deadletter replay`` stored what this dead letter held.
    replayed_at: Mapped[dt.datetime | None]
