"""Dead letters: everything that arrived and was not stored, with the reason and a payload
whose API key has been replaced by its display form."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from userpath_client.contract import MAX_ENVELOPE_BYTES
from userpath_client.schemas import canonical_json, has_nul
from userpath_worker.db import Transaction
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.keys import tokens
from userpath_worker.organizations.models import Organization

PAYLOAD_PREVIEW_CHARS = 64 * 1024  # what is kept of a payload too large or too odd to store whole
_KEY_MARGIN = 256  # longer than a key, in base64 within base64 too


@dataclass(frozen=True, slots=True)
class Rejection:
    """One dead letter before it is written."""

    reason: Reason
    detail: str
    payload: Any
    org_id: int | None = None
    api_key_id: int | None = None
    item: int | None = None  # the event's index in its batch; None for the whole message


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where and when a message arrived, and which message it was."""

    task: str | None
    queue: str | None
    received_at: dt.datetime
    # The message's identity across redeliveries: its task id, or a digest of its body. None for
    # a dead letter that no redelivery can repeat (a replay's).
    message_id: str | None = None


def storable_payload(value: Any) -> Any:
    """``value`` without any key in it, in a form both databases accept.

    JSON that PostgreSQL would refuse (NUL characters, lone surrogates, NaN, absurd nesting)
    and oversized payloads are kept as a bounded text preview instead.
    """
    try:
        encoded = canonical_json(value)
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        encoded = None
    if encoded is not None and len(encoded) <= MAX_ENVELOPE_BYTES and not has_nul(encoded):
        return tokens.scrub(value) if tokens.BYTES_KEY_PATTERN.search(encoded) else value
    return text_preview(value if isinstance(value, str | bytes) else _loose_text(value), encoded)


def without_key(value: Any) -> Any:
    """A payload for the dead-letter table: any ``api_key`` field shown in its display form."""
    if isinstance(value, dict):
        return {name: tokens.redact(item) if name == "api_key" else without_key(item) for name, item in value.items()}
    if isinstance(value, list):
        return [without_key(item) for item in value]
    return value


def text_preview(raw: str | bytes, encoded: bytes | None = None) -> dict[str, Any]:
    """A bounded, scrubbed preview of ``raw``: only the part kept is looked at, whatever its size."""
    size = len(encoded) if encoded is not None else len(raw)
    # Cut a little past the preview first, so that a key across the cut is still whole to the
    # scrubber; then scrubbed, then cut to size.
    head = raw[: PAYLOAD_PREVIEW_CHARS + _KEY_MARGIN]
    if tokens.hides_key(head):
        return {"preview": None, "withheld": "the text holds an API key in base64", "bytes": size}
    text = head.decode("utf-8", "backslashreplace") if isinstance(head, bytes) else head
    return {"preview": tokens.scrub_text(_storable_text(text))[:PAYLOAD_PREVIEW_CHARS], "bytes": size}


def _storable_text(text: str) -> str:
    """``text`` without what no text column holds: lone surrogates and NUL, shown escaped."""
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")


def _loose_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, RecursionError):
        return repr(value)[: PAYLOAD_PREVIEW_CHARS * 2]


def record_dead_letters(
    session: Session, rejections: Sequence[Rejection], delivery: Delivery
) -> list[tuple[int | None, int | None, str]]:
    """Write dead letters once: a redelivered message's are already there and are skipped.
    Returns the (org_id, api_key_id, reason) of those written, for the key's counters."""
    if not rejections:
        return []
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    written = session.execute(
        dialect.insert(DeadLetter)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(DeadLetter.org_id, DeadLetter.api_key_id, DeadLetter.reason),
        [
            {
                "org_id": rejection.org_id,
                "api_key_id": rejection.api_key_id,
                "reason": rejection.reason.value,
                "detail": column_text(rejection.detail, 2000),
                "queue": column_text(delivery.queue),
                "task": column_text(delivery.task),
                "received_at": delivery.received_at,
                "payload": storable_payload(rejection.payload),
                "dedup_key": dedup_key(delivery.message_id, rejection.item),
            }
            for rejection in rejections
        ],
    )
    return [(org_id, api_key_id, reason) for org_id, api_key_id, reason in written]


def dedup_key(message_id: str | None, item: int | None) -> str | None:
    if message_id is None:
        return None
    return hashlib.sha256(f"{message_id}\x1f{'' if item is None else item}".encode()).hexdigest()


def column_text(value: str | None, limit: int = 200) -> str | None:
    """``value`` as a text column can hold it: no NUL (PostgreSQL refuses one), no key, bounded."""
    if value is None:
        return None
    return tokens.scrub_text(_storable_text(value))[:limit]


def list_dead_letters(
    session: Session,
    org_id: int | None,
    reason: str | None = None,
    limit: int = 100,
    since: dt.datetime | None = None,
    unattributed: bool = False,
) -> list[tuple[DeadLetter, str | None]]:
    """The newest dead letters, each with its organization's name: one organization's, or all
    (``org_id=None``) including those without one (an unknown or malformed key), or with
    ``unattributed`` only those without one."""
    if unattributed and org_id is not None:
        raise ValueError("a dead letter without an organization is not one organization's")
    query = select(DeadLetter, Organization.name).outerjoin(Organization, Organization.id == DeadLetter.org_id)
    if org_id is not None:
        query = query.where(DeadLetter.org_id == org_id)
    if unattributed:
        query = query.where(DeadLetter.org_id.is_(None))
    if since is not None:
        query = query.where(DeadLetter.received_at >= since)
    if reason is not None:
        query = query.where(DeadLetter.reason == reason)
    return [(letter, name) for letter, name in session.execute(query.order_by(DeadLetter.id.desc()).limit(limit))]


@dataclass(frozen=True, slots=True)
class PurgeScope:
    """Which dead letters a purge deletes: those received before ``cutoff``, of one organization
    and with one reason when given."""

    cutoff: dt.datetime
    org_id: int | None = None
    reason: str | None = None

    def where(self) -> list[ColumnElement[bool]]:
        clauses = [DeadLetter.received_at < self.cutoff]
        if self.org_id is not None:
            clauses.append(DeadLetter.org_id == self.org_id)
        if self.reason is not None:
            clauses.append(DeadLetter.reason == self.reason)
        return clauses


def count_purgeable(session: Session, scope: PurgeScope) -> int:
    return session.scalar(select(func.count()).select_from(DeadLetter).where(*scope.where())) or 0


def purge_dead_letters(transaction: Transaction, scope: PurgeScope, batch: int = 10_000) -> Iterator[int]:
    """Delete the dead letters in ``scope``, one transaction a batch; yields how many so far,
    after each batch and at least once."""
    purged = 0
    while True:
        with transaction() as session:
            ids = list(session.scalars(select(DeadLetter.id).where(*scope.where()).limit(batch)))
            if ids:
                session.execute(delete(DeadLetter).where(DeadLetter.id.in_(ids)))
        purged += len(ids)
        yield purged
        if len(ids) < batch:
            return
