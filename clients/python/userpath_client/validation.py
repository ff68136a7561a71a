"""Events and webhooks checked against the wire contract at the call: canonical JSON bytes, ready
to queue, or ``InvalidEvent``.

track() must cost a few microseconds, and pydantic is a large share of that; so the common case
(plain str/dict/aware-datetime arguments) is checked here in plain Python against the same
limits, and anything else is left to ``EventIn``, which has the last word.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from userpath_client.contract import EVENT_ID_MAX, EVENT_NAME_MAX, MAX_ENVELOPE_BYTES, MAX_EVENT_BYTES, PERSON_ID_MAX
from userpath_client.errors import InvalidEvent
from userpath_client.schemas import EventIn, WebhookIn, canonical_json, describe, has_nul
from userpath_client.wire import new_event_id, now_iso


def event_json(
    event: Any,
    user_id: Any,
    anonymous_id: Any,
    properties: Any,
    timestamp: Any,
    context: Any,
    event_id: Any,
) -> bytes:
    """The event as canonical JSON, with its id and timestamp, or ``InvalidEvent``."""
    if not _surely_valid(event, user_id, anonymous_id, properties, timestamp, context, event_id):
        raw = {
            "event": event,
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "timestamp": datetime.now(UTC) if timestamp is None else timestamp,
            "context": context,
        }
        if properties is not None:
            raw["properties"] = properties
        if event_id is not None:
            raw["event_id"] = event_id
        try:
            model = EventIn.model_validate(raw)
        except ValidationError as error:
            name = repr(event) if isinstance(event, str) else "event"
            raise InvalidEvent(f"invalid event {name}: {describe(error)}") from None
        event, user_id, anonymous_id = model.event, model.user_id, model.anonymous_id
        properties, timestamp, context = model.properties, model.timestamp, model.context
        event_id = model.event_id

    fields = {
        "event_id": event_id or new_event_id(),
        "event": event,
        "timestamp": now_iso() if timestamp is None else timestamp.isoformat(),
        "properties": {} if properties is None else properties,
    }
    if user_id is not None:
        fields["user_id"] = user_id
    if anonymous_id is not None:
        fields["anonymous_id"] = anonymous_id
    if context is not None:
        fields["context"] = context
    data = _storable_json(fields, "event", event)
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event {event!r} is {len(data)} bytes as JSON; the limit is {MAX_EVENT_BYTES}")
    return data


def job_context(
    context: Mapping[str, Any] | None, job_name: str | None, run_id: str | None
) -> Mapping[str, Any] | None:
    """``context`` with ``job_name`` and ``run_id`` in ``context["job"]``, which the contract reserves for them."""
    if job_name is None and run_id is None:
        return context
    if context is not None and "job" in context:
        raise InvalidEvent("give the job either as context['job'] or as job_name/run_id, not both")
    job = {"name": job_name, "run_id": run_id}
    return {**(context or {}), "job": {k: v for k, v in job.items() if v is not None}}


def webhook_json(api_key: str, provider: str, delivery_id: str, headers: Mapping[str, str], body: str | bytes) -> bytes:
    """One webhook delivery, received now, as canonical JSON, or ``InvalidEvent``."""
    if isinstance(body, bytes | bytearray):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(
                f"webhook body from {provider!r} is not UTF-8 text; the contract carries text only"
            ) from None
    payload = {
        "api_key": api_key,
        "provider": provider,
        "delivery_id": delivery_id,
        "received_at": now_iso(),
        "headers": dict(headers),
        "body": body,
    }
    try:
        WebhookIn.model_validate(payload)
    except ValidationError as error:
        raise InvalidEvent(f"invalid webhook: {describe(error)}") from None
    data = _storable_json(payload, "webhook from", provider)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InvalidEvent(f"webhook from {provider!r} is {len(data)} bytes as JSON; the limit is {MAX_ENVELOPE_BYTES}")
    return data


def _surely_valid(
    event: Any, user_id: Any, anonymous_id: Any, properties: Any, timestamp: Any, context: Any, event_id: Any
) -> bool:
    """True only for arguments ``EventIn`` certainly accepts as they are; False means "ask EventIn"."""
    return (
        type(event) is str
        and 0 < len(event) <= EVENT_NAME_MAX
        and (user_id is not None or anonymous_id is not None)
        and (user_id is None or (type(user_id) is str and 0 < len(user_id) <= PERSON_ID_MAX))
        and (anonymous_id is None or (type(anonymous_id) is str and 0 < len(anonymous_id) <= PERSON_ID_MAX))
        and (event_id is None or (type(event_id) is str and 0 < len(event_id) <= EVENT_ID_MAX))
        and (timestamp is None or (type(timestamp) is datetime and timestamp.utcoffset() is not None))
        and (properties is None or _plain_object(properties))
        and (context is None or _plain_object(context))
    )


def _plain_object(value: Any) -> bool:
    return type(value) is dict and all(type(key) is str for key in value)


def _storable_json(value: dict[str, Any], kind: str, name: str) -> bytes:
    """``canonical_json(value)``, or ``InvalidEvent`` for what the worker could not store."""
    try:
        data = canonical_json(value)
    except (TypeError, ValueError, RecursionError) as error:  # not JSON, NaN, lone surrogate, too deep
        raise InvalidEvent(f"{kind} {name!r} is not storable JSON: {error}") from None
    if has_nul(data):
        raise InvalidEvent(f"{kind} {name!r} contains a NUL character, which the database cannot store")
    if b'"__type__"' in data and _has_transport_marker(value):
        raise InvalidEvent(
            f"{kind} {name!r} has an object with exactly the keys __type__ and __value__, which the "
            "broker's JSON decoder (kombu) turns into a Python object; rename one of them"
        )
    return data


def _has_transport_marker(value: Any) -> bool:
    if isinstance(value, dict):
        return value.keys() == {"__type__", "__value__"} or any(map(_has_transport_marker, value.values()))
    if isinstance(value, list | tuple):
        return any(map(_has_transport_marker, value))
    return False
