"""The events and webhook deliveries of wire contract v1 (docs/contract.md), as pydantic models,
and the one JSON encoding both sides measure and hash.

The client validates with these models and the worker does again, so an event the client
accepts is an event the worker stores.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Annotated, Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from userpath_client.contract import (
    EVENT_ID_MAX,
    EVENT_NAME_MAX,
    MAX_BATCH_EVENTS,
    MAX_NESTING,
    PERSON_ID_MAX,
    PROVIDER_PATTERN,
)


def _as_json_text(value: Any) -> str:
    """What orjson writes for the Python values kombu's decoder makes (datetimes, dates, times,
    UUIDs), so both encoders below agree."""
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_CANONICAL = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False, default=_as_json_text
)


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding we measure, hash and store: compact, sorted keys, UTF-8.

    Datetimes, dates, times and UUIDs (kombu's decoder makes them from {"__type__": ...,
    "__value__": ...} objects) become ISO-8601 and UUID text. Raises ValueError for what no
    database can store as JSON: NaN or infinite numbers, lone surrogates, other objects, more
    than ``MAX_NESTING`` levels.

    orjson encodes ten times faster than the standard library. Where it cannot (integers beyond
    64 bits, lone surrogates, more than ``MAX_NESTING`` levels) the standard encoder decides;
    orjson writes NaN as null, so output with a null in it is checked by the standard encoder too.
    """
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return _standard_canonical_json(value)
    if b"null" in encoded:
        _standard_canonical_json(value)  # raises on NaN and infinities
    return encoded


def _standard_canonical_json(value: Any) -> bytes:
    if nested_deeper_than(value, MAX_NESTING):  # before the standard encoder's own recursion
        raise ValueError(f"nested more than {MAX_NESTING} levels deep")
    try:
        return _CANONICAL.encode(value).encode()
    except TypeError as error:
        raise ValueError(f"not JSON: {error}") from None


def nested_deeper_than(value: Any, levels: int) -> bool:
    """Whether ``value`` has more than ``levels`` levels of arrays and objects. It walks without
    recursing, so no depth makes it fail, and stops at the first branch past the limit."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list | tuple) else None
        if children is None:
            continue
        if depth > levels:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False


# A JSON-escaped NUL (an odd number of backslashes, then u0000): PostgreSQL refuses it in text
# and in JSONB.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_nul(encoded: bytes) -> bool:
    # The substring test first: the expression's look-behind makes it scan ten times slower.
    return b"\\u0000" in encoded and _ESCAPED_NUL.search(encoded) is not None


def describe(error: ValidationError) -> str:
    """A validation failure in one line: each location and what is wrong, never the input."""
    problems = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def _text(max_length: int, min_length: int = 1) -> Any:
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length)]


class EventIn(BaseModel):
    """One event of an envelope's batch. Unknown fields are refused, so typos are caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: _text(EVENT_ID_MAX) | None = None
    event: _text(EVENT_NAME_MAX)
    user_id: _text(PERSON_ID_MAX) | None = None
    anonymous_id: _text(PERSON_ID_MAX) | None = None
    timestamp: AwareDatetime
    properties: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _someone(self) -> EventIn:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("an event needs a user_id or an anonymous_id")
        return self


class EnvelopeIn(BaseModel):
    """What ``userpath.track`` receives. Each event of ``batch`` is validated on its own."""

    model_config = ConfigDict(extra="forbid")

    api_key: str
    sent_at: AwareDatetime | None = None
    batch: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class WebhookIn(BaseModel):
    """What ``userpath.webhook`` receives: one third-party delivery, forwarded as received."""

    model_config = ConfigDict(extra="forbid")

    api_key: str
    provider: Annotated[str, StringConstraints(pattern=PROVIDER_PATTERN)]
    delivery_id: _text(PERSON_ID_MAX)
    received_at: AwareDatetime
    headers: dict[str, str] = Field(default_factory=dict)
    body: str
