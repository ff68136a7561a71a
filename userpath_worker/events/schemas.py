"""Wire contract v1 (docs/contract.md): the envelope, its events, and webhook deliveries.

Both the worker and the producer client validate with these models, so an event the client
accepts is an event the worker stores.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Annotated, Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from userpath_worker.keys.tokens import redact

MAX_ENVELOPE_BYTES = 1024 * 1024  # Segment allows 500 KB per batch; we allow 1 MiB
MAX_EVENT_BYTES = 32 * 1024  # as Segment
MAX_BATCH_EVENTS = 1000

TRACK_TASK = "userpath.track"
WEBHOOK_TASK = "userpath.webhook"
EVENTS_QUEUE = "userpath.events"  # server-side events from backend services
JOBS_QUEUE = "userpath.jobs"  # events reported by background jobs
WEBHOOKS_QUEUE = "userpath.webhooks"  # third-party webhooks forwarded by receivers


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
_LENIENT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr)


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding we measure, hash and store: compact, sorted keys, UTF-8.

    Datetimes, dates, times and UUIDs (kombu's decoder makes them from {"__type__": ...,
    "__value__": ...} objects) become ISO-8601 and UUID text. Raises ValueError for what no
    database can store as JSON: NaN or infinite numbers, lone surrogates, other objects.

    orjson encodes ten times faster than the standard library. Where it cannot (integers beyond
    64 bits, lone surrogates, more than 254 levels) the standard encoder decides; orjson writes
    NaN as null, so output with a null in it is checked by the standard encoder too.
    """
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return _standard_canonical_json(value)
    if b"null" in encoded:
        _standard_canonical_json(value)  # raises on NaN and infinities
    return encoded


def _standard_canonical_json(value: Any) -> bytes:
    try:
        return _CANONICAL.encode(value).encode()
    except TypeError as error:
        raise ValueError(f"not JSON: {error}") from None


def encoded_size(value: Any) -> int:
    """The size of ``value`` as compact UTF-8 JSON, even when parts of it are not storable, so
    a message's size is judged before its events are (each then gets its own verdict)."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return len(_LENIENT.encode(value).encode("utf-8", "surrogatepass"))


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

    event_id: _text(100) | None = None
    event: _text(200)
    user_id: _text(200) | None = None
    anonymous_id: _text(200) | None = None
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
    provider: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")]
    delivery_id: _text(200)
    received_at: AwareDatetime
    headers: dict[str, str] = Field(default_factory=dict)
    body: str


def summarize_arguments(args: Any) -> str:
    """A task's argument list as Celery may show it (logs, task events, Flower): the key in its
    display form and the batch as a count, so neither secrets nor customer data leak there."""
    if not isinstance(args, list | tuple):
        return "(?)"
    shown = []
    for argument in args:
        if not isinstance(argument, dict):
            shown.append(f"<{type(argument).__name__}>")
            continue
        fields = {name: f"<{type(value).__name__}>" for name, value in argument.items()}
        if "api_key" in argument:
            fields["api_key"] = repr(redact(argument["api_key"]))
        if isinstance(argument.get("batch"), list):
            fields["batch"] = f"<{len(argument['batch'])} events>"
        shown.append("{" + ", ".join(f"{name!r}: {value}" for name, value in fields.items()) + "}")
    return "(" + ", ".join(shown) + ("," if len(shown) == 1 else "") + ")"
