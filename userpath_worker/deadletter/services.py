"""Dead letters: everything that arrived and was not stored, with the reason and a payload
whose API key has been replaced by its display form."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.events.schemas import MAX_ENVELOPE_BYTES, canonical_json, has_nul
from userpath_worker.keys import tokens

PAYLOAD_PREVIEW_CHARS = 64 * 1024  # what is kept of a payload too large or too odd to store whole


@dataclass(frozen=True, slots=True)
class Rejection:
    """One dead letter before it is written."""

    reason: Reason
    detail: str
    payload: Any
    org_id: int | None = None
    api_key_id: int | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where and when a message arrived."""

    task: str | None
    queue: str | None
    received_at: dt.datetime


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
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    text = text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")
    size = len(encoded) if encoded is not None else len(raw)
    return {"preview": tokens.scrub_text(text[:PAYLOAD_PREVIEW_CHARS]), "bytes": size}


def _loose_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, RecursionError):
        return repr(value)[: PAYLOAD_PREVIEW_CHARS * 2]


def record(session: Session, rejections: Sequence[Rejection], delivery: Delivery) -> None:
    if not rejections:
        return
    session.execute(
        insert(DeadLetter),
        [
            {
                "org_id": rejection.org_id,
                "api_key_id": rejection.api_key_id,
                "reason": rejection.reason.value,
                "detail": rejection.detail[:2000],
                "queue": delivery.queue,
                "task": delivery.task,
                "received_at": delivery.received_at,
                "payload": storable_payload(rejection.payload),
            }
            for rejection in rejections
        ],
    )


def list_dead_letters(
    session: Session,
    org_id: int | None,
    reason: str | None = None,
    limit: int = 100,
    since: dt.datetime | None = None,
) -> list[DeadLetter]:
    """The newest dead letters of one organization, or of all (``org_id=None``)."""
    query = select(DeadLetter)
    if org_id is not None:
        query = query.where(DeadLetter.org_id == org_id)
    if since is not None:
        query = query.where(DeadLetter.received_at >= since)
    if reason is not None:
        query = query.where(DeadLetter.reason == reason)
    return list(session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit)))
