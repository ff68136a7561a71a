"""Writing the audit log: who did what, to which organization and key, and when.

Like every service, ``write`` works inside the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.emails import normalize_email

SYSTEM = "system"  # the actor of what the worker or beat does on its own


@dataclass(frozen=True, slots=True)
class Entry:
    """What one audit row says was done; ``write`` adds by whom and when. Never a secret."""

    org_id: int
    action: str
    api_key_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def write(session: Session, actor: str, *entries: Entry, at: dt.datetime | None = None) -> None:
    """Record that ``actor`` (a member's e-mail, or ``SYSTEM``) did each entry's action at ``at``
    (now unless given): one INSERT for all of them."""
    if not entries:
        return
    actor = normalize_email(actor)
    at = at or utcnow()
    session.execute(
        insert(AuditEntry),
        [
            {
                "org_id": entry.org_id,
                "actor": actor,
                "action": entry.action,
                "api_key_id": entry.api_key_id,
                "detail": entry.detail,
                "created_at": at,
            }
            for entry in entries
        ],
    )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an organization's audit log, newest first."""

    entries: list[AuditEntry]
    number: int  # from 1
    has_next: bool


def page(session: Session, org_id: int, number: int = 1, size: int = 50) -> Page:
    """Page ``number`` (from 1; anything lower is the first) of the organization's audit log."""
    number = max(number, 1)
    rows = list(
        session.scalars(
            select(AuditEntry)
            .where(AuditEntry.org_id == org_id)
            .order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
            .offset((number - 1) * size)
            .limit(size + 1)  # one more tells whether a next page exists
        )
    )
    return Page(rows[:size], number, len(rows) > size)
