"""Writing the audit log: who did what, to which organization and key, and when.

Like every service, ``write`` works inside the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.organizations.services import normalize_email

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
