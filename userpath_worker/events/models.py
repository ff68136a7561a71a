from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from userpath_client.contract import JOBS_QUEUE
from userpath_worker.db import Base, BigId, string_enum
from userpath_worker.keys.tokens import Environment


class Source(enum.StrEnum):
    SERVER = "server"
    JOB = "job"
    WEBHOOK = "webhook"

    @classmethod
    def for_queue(cls, queue: str | None) -> Source:
        """Who sent a ``userpath.track`` message, by the queue it came from (the contract's rule)."""
        return cls.JOB if queue == JOBS_QUEUE else cls.SERVER


class Event(Base):
    """One stored event. Analysts query this table directly: its columns are a public contract.

    No foreign keys: keys and organizations are never hard-deleted, and per-row foreign-key
    checks would cost a large share of the insert rate on the hot path.
    """

    __tablename__ = "events"
    __table_args__ = (
        # Redelivered or re-sent events are stored once.
        UniqueConstraint("org_id", "event_id"),
        Index("ix_events_org_occurred", "org_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int]
    api_key_id: Mapped[int]
    environment: Mapped[Environment] = mapped_column(string_enum(Environment, "event_environment"))
    source: Mapped[Source] = mapped_column(string_enum(Source, "event_source"))
    event_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(200))
    anonymous_id: Mapped[str | None] = mapped_column(String(200))
    properties: Mapped[dict[str, Any]]
    context: Mapped[dict[str, Any] | None]
    timestamp: Mapped[dt.datetime]  # as the client said
    sent_at: Mapped[dt.datetime | None]  # the client's clock when it sent the batch
    received_at: Mapped[dt.datetime]  # the worker's clock
    occurred_at: Mapped[dt.datetime]  # timestamp corrected for the client's clock skew
    # Webhooks: true when the signature verified with the organization's secret, false when the
    # organization has no secret for the provider; null for track events, which carry no signature.
    verified: Mapped[bool | None]
