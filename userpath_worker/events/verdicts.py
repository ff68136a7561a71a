"""Verdicts on a message: which of its events to store, as rows, and which to dead-letter, why.

Pure: no session, no SQL. The key is looked up by the caller (``events.services``), and the
rows are written by ``events.storage``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from userpath_client.contract import DELIVERY_ID_MAX, MAX_ENVELOPE_BYTES, MAX_EVENT_BYTES
from userpath_client.schemas import EnvelopeIn, EventIn, WebhookIn, canonical_json, describe, has_nul
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.services import Delivery, Rejection, without_key
from userpath_worker.events import normalizers
from userpath_worker.events.models import Source
from userpath_worker.events.schemas import TOO_DEEP, TooDeep, encoded_size
from userpath_worker.keys import scopes, tokens
from userpath_worker.keys.services import KeyIdentity
from userpath_worker.keys.tokens import AuthFailure
from userpath_worker.webhooks import signatures
from userpath_worker.webhooks.services import SigningKeysOfOrg

_EVENT_ID_NAMESPACE = uuid.UUID("6f1c1a52-3d4e-4a8f-9a57-0d5b2b0c9e11")
_REFUSED_KEY = {
    AuthFailure.MALFORMED: Reason.MALFORMED_KEY,
    AuthFailure.BAD_CHECKSUM: Reason.BAD_CHECKSUM,
    AuthFailure.UNKNOWN: Reason.UNKNOWN_KEY,
    AuthFailure.DELETED: Reason.DELETED_KEY,
    AuthFailure.EXPIRED: Reason.EXPIRED_KEY,
}
# Webhook headers that carry someone's credentials; they are not kept in the event.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
# What an event row's ``event_json`` holds besides the name (as "event"): the columns the
# PostgreSQL insert (``events.storage``) reads from it.
_EVENT_JSON_FIELDS = ("user_id", "anonymous_id", "properties", "context")


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The events rows to store and the dead letters to write."""

    rows: list[dict[str, Any]]
    rejections: list[Rejection]


def derived_event_id(*parts: str | bytes) -> str:
    """A deterministic event id, so a re-sent event without one is still stored once."""
    text = "\x1f".join(part.decode() if isinstance(part, bytes) else part for part in parts)
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, text))


def occurred_at(timestamp: dt.datetime, sent_at: dt.datetime | None, received_at: dt.datetime) -> dt.datetime:
    """Segment's clock-skew correction: the client's clock is trusted for durations only."""
    if sent_at is None:
        return timestamp
    return received_at - (sent_at - timestamp)


# A message whole: argument shape, size, then its key (looked up by the caller).


def the_one_argument(args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any] | Rejection:
    """The contract's single positional argument, which must be a JSON object."""
    if len(args) != 1 or kwargs:
        return Rejection(
            Reason.INVALID_ENVELOPE,
            f"expected exactly one positional argument, got {len(args)} positional and {len(kwargs)} keyword",
            without_key({"args": list(args), "kwargs": kwargs}),
        )
    if not isinstance(args[0], dict):
        return Rejection(
            Reason.INVALID_ENVELOPE, f"the argument must be a JSON object, not {type(args[0]).__name__}", args[0]
        )
    return args[0]


def size_refusal(message: dict[str, Any]) -> Rejection | None:
    """Why a message is refused for its size or depth before its key is looked at, if it is."""
    try:
        size = encoded_size(message)
    except TooDeep:
        # Not kept: every way of keeping it (scrubbing, encoding) would recurse as deep.
        return Rejection(Reason.INVALID_EVENT, TOO_DEEP, None)
    if size > MAX_ENVELOPE_BYTES:
        detail = f"message is {size} bytes; the limit is {MAX_ENVELOPE_BYTES}"
        return Rejection(Reason.TOO_LARGE, detail, without_key(message))
    return None


def key_refusal(message: dict[str, Any], found: KeyIdentity | AuthFailure, now: dt.datetime) -> Rejection | None:
    """Why a message is refused for its key (``found`` by looking it up) at ``now``, if it is;
    a known key's refusal belongs to its organization."""
    refusal = found if isinstance(found, AuthFailure) else found.refusal(now)
    if refusal is None:
        return None
    known = found if isinstance(found, KeyIdentity) else None
    return Rejection(
        _REFUSED_KEY[refusal],
        f"API key refused: {refusal.value}",
        without_key(message),
        org_id=known.org_id if known else None,
        api_key_id=known.key_id if known else None,
    )


def scope_refusal(message: dict[str, Any], identity: KeyIdentity, source: Source) -> Rejection | None:
    """Why a message is refused because its key may not send ``source`` (for a webhook, the
    message's provider), if it is; the refusal belongs to the key's organization."""
    if identity.scopes is None:  # most keys: nothing to look up
        return None
    provider = message.get("provider") if source is Source.WEBHOOK else None
    if scopes.permits(identity.scopes, source, provider):
        return None
    what = f"{provider} webhooks" if isinstance(provider, str) else f"{source.value} events"
    return Rejection(
        Reason.SCOPE_DENIED,
        f"API key may not send {what}: its scopes are {scopes.described(identity.scopes)}",
        without_key(message),
        org_id=identity.org_id,
        api_key_id=identity.key_id,
    )


# Per-task verdicts: which events to store, which to dead-letter.


def track_verdicts(envelope: dict[str, Any], identity: KeyIdentity, source: Source, delivery: Delivery) -> Verdicts:
    def refused(reason: Reason, detail: str, payload: Any, item: int | None = None) -> Rejection:
        return Rejection(reason, detail, payload, identity.org_id, identity.key_id, item)

    try:
        parsed = EnvelopeIn.model_validate(envelope)
    except ValidationError as error:
        return Verdicts([], [refused(Reason.INVALID_ENVELOPE, describe(error), without_key(envelope))])

    rows: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(parsed.batch):
        try:
            encoded = canonical_json(raw)
        except (ValueError, RecursionError):
            rejections.append(
                refused(
                    Reason.INVALID_EVENT,
                    f"batch.{index}: not storable JSON (NaN, lone surrogate or too deep)",
                    raw,
                    index,
                )
            )
            continue
        if len(encoded) > MAX_EVENT_BYTES:
            rejections.append(
                refused(
                    Reason.TOO_LARGE,
                    f"batch.{index}: event is {len(encoded)} bytes; the limit is {MAX_EVENT_BYTES}",
                    raw,
                    index,
                )
            )
            continue
        if has_nul(encoded):
            rejections.append(refused(Reason.INVALID_EVENT, f"batch.{index}: contains a NUL character", raw, index))
            continue
        try:
            event = EventIn.model_validate(raw)
        except ValidationError as error:
            rejections.append(refused(Reason.INVALID_EVENT, f"batch.{index}: {describe(error)}", raw, index))
            continue
        stored_json = encoded
        if tokens.BYTES_KEY_PATTERN.search(encoded):
            scrubbed = tokens.scrub(raw)
            event = EventIn.model_validate(scrubbed)
            stored_json = canonical_json(scrubbed)
        try:
            timestamp = event.timestamp.astimezone(dt.UTC)
            occurred = occurred_at(timestamp, parsed.sent_at, delivery.received_at)
        except OverflowError:
            rejections.append(
                refused(
                    Reason.INVALID_EVENT,
                    f"batch.{index}: timestamp is out of range, or too far from sent_at",
                    raw,
                    index,
                )
            )
            continue
        rows.append(
            _event_row(
                identity,
                source,
                event_id=event.event_id or derived_event_id(str(identity.key_id), encoded),
                name=event.event,
                user_id=event.user_id,
                anonymous_id=event.anonymous_id,
                properties=event.properties,
                context=event.context,
                event_json=stored_json,
                timestamp=timestamp,
                sent_at=parsed.sent_at,
                received_at=delivery.received_at,
                occurred=occurred,
            )
        )
    return Verdicts(rows, rejections)


def webhook_verdicts(
    payload: dict[str, Any],
    identity: KeyIdentity,
    delivery: Delivery,
    signing_keys: SigningKeysOfOrg,
    tolerance: dt.timedelta,
) -> Verdicts:
    """``signing_keys``: the HMAC keys of the organization's secrets, by provider. A provider with
    keys must verify; one without is stored unverified."""

    def refused(reason: Reason, detail: str) -> Verdicts:
        return Verdicts([], [Rejection(reason, detail, without_key(payload), identity.org_id, identity.key_id)])

    try:
        webhook = WebhookIn.model_validate(payload)
    except ValidationError as error:
        return refused(Reason.INVALID_ENVELOPE, describe(error))
    try:
        received_at = webhook.received_at.astimezone(dt.UTC)
    except OverflowError:
        return refused(Reason.INVALID_EVENT, "received_at is out of range")
    headers = {name.lower(): value for name, value in webhook.headers.items()}
    keys = signing_keys.get(webhook.provider)
    verified = keys is not None
    if verified:  # before anything else: a forgery is refused as one, whatever else is wrong with it
        refusal = _signature_refusal(webhook, headers, keys, received_at, tolerance)
        if refusal is not None:
            return refused(Reason.UNSIGNED_WEBHOOK if refusal.unsigned else Reason.BAD_SIGNATURE, refusal.detail)
    try:
        body: Any = json.loads(webhook.body)
    except (ValueError, RecursionError):
        body = webhook.body  # not JSON, or nested past any limit: kept as text
    try:
        unstorable = has_nul(canonical_json([body, webhook.headers]))
    except UnicodeError:
        return refused(Reason.INVALID_EVENT, "the webhook is not storable JSON (a lone surrogate)")
    except ValueError as error:  # NaN, nesting past the contract's limit
        return refused(Reason.INVALID_EVENT, f"the webhook is not storable JSON ({error})")
    if unstorable:
        return refused(Reason.INVALID_EVENT, "the webhook contains a NUL character")
    body = tokens.scrub(body)
    normalized = normalizers.normalize(webhook.provider, webhook.headers, body)
    not_kept = _CREDENTIAL_HEADERS | signatures.signature_headers()
    kept = {name: value for name, value in webhook.headers.items() if name.lower() not in not_kept}
    signed_id = _signed_delivery_id(webhook.provider, headers, body) if verified else None
    delivery_id = signed_id or tokens.scrub_text(webhook.delivery_id)
    if verified and signed_id is None:  # the provider signs the body alone: the body is the delivery
        replay_identity = "sha256:" + hashlib.sha256(webhook.body.encode("utf-8", "surrogatepass")).hexdigest()
    else:
        replay_identity = delivery_id
    row = _event_row(
        identity,
        Source.WEBHOOK,
        event_id=derived_event_id("webhook", webhook.provider, replay_identity),
        name=f"{webhook.provider}.{normalized.type}"[:200],
        user_id=(normalized.user_id or f"webhook:{webhook.provider}")[:200],
        anonymous_id=None,
        properties=body if isinstance(body, dict) else {"body": body},
        context={
            "webhook": {
                "provider": webhook.provider,
                "delivery_id": delivery_id,
                "headers": tokens.scrub(kept),
            }
        },
        timestamp=received_at,
        sent_at=None,
        received_at=delivery.received_at,
        verified=verified,
    )
    return Verdicts([row], [])


def _signature_refusal(
    webhook: WebhookIn,
    headers: dict[str, str],
    keys: tuple[bytes, ...],
    received_at: dt.datetime,
    tolerance: dt.timedelta,
) -> signatures.Refusal | None:
    scheme = signatures.scheme(webhook.provider)
    if scheme is None or not keys:
        return signatures.Refusal(
            False,
            f"the organization's {webhook.provider} secrets are not usable here: no signature check for the "
            "provider in this worker, or USERPATH_SECRET_KEY is not the key they were stored with",
        )
    # The raw body as forwarded; surrogatepass keeps a lone surrogate from raising (it cannot verify).
    body = webhook.body.encode("utf-8", "surrogatepass")
    return scheme.verify(signatures.Signed(headers, body, keys, received_at, tolerance))


def _signed_delivery_id(provider: str, headers: dict[str, str], body: Any) -> str | None:
    """The delivery id a verified delivery's signature covers, if the provider puts one there: a
    header (Standard Webhooks' ``webhook-id``) or the body's own id (Stripe's ``evt_...``)."""
    scheme = signatures.scheme(provider)
    if scheme is None:
        return None
    value = headers.get(scheme.delivery_id_header) if scheme.delivery_id_header else None
    if value is None and scheme.body_id_field and isinstance(body, dict):
        value = body.get(scheme.body_id_field)
    return value if isinstance(value, str) and 0 < len(value) <= DELIVERY_ID_MAX else None


def _event_row(
    identity: KeyIdentity,
    source: Source,
    *,
    timestamp: dt.datetime,
    sent_at: dt.datetime | None,
    received_at: dt.datetime,
    event_json: bytes | None = None,
    occurred: dt.datetime | None = None,
    verified: bool | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An events row, plus ``event_json``: the event (name, users, properties, context) as
    canonical JSON, which the PostgreSQL insert reads those columns from."""
    if event_json is None:
        event_json = canonical_json({"event": fields["name"]} | {name: fields[name] for name in _EVENT_JSON_FIELDS})
    return {
        "event_json": event_json,
        "org_id": identity.org_id,
        "api_key_id": identity.key_id,
        "environment": identity.environment,
        "source": source,
        "timestamp": timestamp,
        "sent_at": sent_at,
        "received_at": received_at,
        "occurred_at": occurred or occurred_at(timestamp, sent_at, received_at),
        "verified": verified,
        **fields,
    }
