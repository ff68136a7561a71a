from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from userpath_worker.db import Base, string_enum, utcnow


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Days its events are kept; None: USERPATH_EVENT_RETENTION_DAYS (events.retention).
    event_retention_days: Mapped[int | None]


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("org_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[Role] = mapped_column(string_enum(Role, "member_role"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OrganizationRateLimit(Base):
    """An organization's own rate at the edge (``userpath orgs set-limits``); without a row the
    edge applies USERPATH_EDGE_EVENTS_PER_SECOND and USERPATH_EDGE_BURST. A table of its own, not
    columns of ``organizations``: the worker loads organizations, and never reads this."""

    __tablename__ = "organization_rate_limits"

    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    events_per_second: Mapped[int]
    burst: Mapped[int]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
