"""Segment's Tracking API calls as the contract's events: one mapping, no I/O.

Every call type is stored as an event (docs/contract.md, "The HTTP edge"): a track under its own
name, the others under a reserved name whose properties carry what the call says (identify's
traits, a page's name and category, a group's id and traits, an alias' previous id). Each event is
judged by the client's ``event_json`` (``EventIn``, the storable-JSON and size rules): the contract's
one set of rules.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from userpath_client.errors import InvalidEvent
from userpath_client.schemas import canonical_json, describe
from userpath_client.validation import event_json

CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# The stored name of each call type but track, whose event names itself.
RESERVED_NAMES = {kind: f"${kind}" for kind in CALL_TYPES if kind != "track"}

_AWARE_TIME = TypeAdapter(AwareDatetime)


class UnusableBody(ValueError):
    """A body the edge cannot read as a call or a batch; the message says why, in one line."""


@dataclass
class Judged:
    """A request's events: ``accepted`` and ``refused`` both hold canonical JSON to send on (the
    worker dead-letters the refused ones, where the owner finds them), ``refusals`` says which
    calls were refused and why, by their index in the request."""

    accepted: list[bytes] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events(self) -> list[bytes]:
        return self.accepted + self.refused


def sent_at(body: dict[str, Any]) -> str | None:
    """The caller's ``sentAt`` as ISO-8601 with offset, None when absent; ``UnusableBody`` if unusable."""
    value = body.get("sentAt")
    if value is None:
        return None
    parsed = _time(value)
    if isinstance(parsed, dt.datetime):
        return parsed.isoformat()
    try:
        return _AWARE_TIME.validate_python(value).isoformat()
    except ValidationError as error:
        raise UnusableBody(f"sentAt: {describe(error)}") from None


def judge(calls: list[Any], route_type: str | None, defaults: dict[str, Any]) -> Judged:
    """Each call mapped and judged on its own. ``route_type``: the call type of /v1/<type> (None
    for /v1/batch, whose calls name their own); ``defaults``: a batch's ``context``, and the
    ``timestamp`` of a call without one (the caller's sentAt: its own clock, as the skew needs)."""
    judged = Judged()
    for index, call in enumerate(calls):
        if not isinstance(call, dict):
            judged.refusals.append({"index": index, "reason": "a call is a JSON object"})
            continue
        kind = route_type or call.get("type")
        if kind not in CALL_TYPES:
            judged.refusals.append({"index": index, "reason": f"type: one of {', '.join(CALL_TYPES)}"})
            continue
        fields = contract_fields(kind, call, defaults)
        try:
            judged.accepted.append(event_json(**fields))
        except InvalidEvent as refusal:
            judged.refusals.append({"index": index, "reason": str(refusal)})
            forwarded = _forwardable(fields)
            if forwarded is not None:
                judged.refused.append(forwarded)
    return judged


def contract_fields(kind: str, call: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``event_json``'s arguments for one Segment call of type ``kind``."""
    return {
        "event": call.get("event") if kind == "track" else RESERVED_NAMES[kind],
        "user_id": _identifier(call.get("userId")),
        "anonymous_id": _identifier(call.get("anonymousId")),
        "properties": _properties(kind, call),
        # originalTimestamp is the device's clock when the call was made; Segment's server-side
        # libraries send it as timestamp. Either is corrected by the envelope's sentAt (the skew).
        "timestamp": _time(call.get("originalTimestamp") or call.get("timestamp") or defaults.get("timestamp")),
        "context": call.get("context", defaults.get("context")),
        "event_id": call.get("messageId"),
    }


def _properties(kind: str, call: dict[str, Any]) -> Any:
    if kind == "track":
        return call.get("properties")
    if kind == "identify":
        return call.get("traits", {})
    if kind in ("page", "screen"):
        properties = call.get("properties", {})
        if not isinstance(properties, dict):
            return properties  # refused by the model, with its reason
        named = {"name": call.get("name"), "category": call.get("category")}
        return {**properties, **{key: value for key, value in named.items() if value is not None}}
    if kind == "group":
        return {"group_id": call.get("groupId"), "traits": call.get("traits", {})}
    return {"previous_id": call.get("previousId")}  # alias


def _time(value: Any) -> Any:
    """An ISO-8601 text with an offset as a datetime, which lets ``event_json`` take its fast path
    (pydantic is most of an event's cost); anything else as it is, for ``EventIn`` to judge."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.utcoffset() is not None:
                return parsed
    return value


def _identifier(value: Any) -> Any:
    """Segment's libraries accept numeric user ids and send them as numbers; the contract's are text."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _forwardable(fields: dict[str, Any]) -> bytes | None:
    """A refused event as the worker would receive it, so that it becomes a dead letter; None
    for one that cannot travel (not storable JSON, or an object kombu's decoder would turn into a
    Python value, which would refuse the whole envelope)."""
    present = {name: value for name, value in fields.items() if value is not None}
    try:
        data = canonical_json(present)
    except (TypeError, ValueError, RecursionError):
        return None
    return None if b'"__type__"' in data else data
