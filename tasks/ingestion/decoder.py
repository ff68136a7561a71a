"""The boundary: what a broker handed over becomes the core's input or a dead letter with a
reason, and never an exception, whatever the types of its headers, properties and body.

Both consumers judge with ``decode``: Celery's (``tasks/consumer.py``) before Celery's own code
sees a message, and the batched step (``tasks/ingestion/job.py``) for the ingestion queues.
A dead letter made here keeps the decoded body, scrubbed of keys, never the transport
document: a key inside base64 or a compressed body is out of the scrubber's sight.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from kombu.serialization import loads
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from userpath_client.contract import CONTENT_ENCODING, CONTENT_TYPE, MAX_ENVELOPE_BYTES, TRACK_TASK, WEBHOOK_TASK
from userpath_client.schemas import describe
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.services import Delivery, Rejection, without_key
from userpath_worker.events.models import Source
from userpath_worker.events.schemas import TOO_DEEP
from userpath_worker.events.services import Incoming, Refused

logger = logging.getLogger("userpath.worker")

INGESTION_TASKS = frozenset({TRACK_TASK, WEBHOOK_TASK})
# Our retries come back with an ETA at most a minute ahead; a later one would sit in a worker's
# memory, unacknowledged, for as long as the producer asked.
MAX_ETA_AHEAD = dt.timedelta(seconds=120)
_UTF8 = frozenset({CONTENT_ENCODING, "utf8"})
# Refused, but a key in them is plain text, which the scrubber finds: kept as a preview.
_TEXT_SERIALIZERS = frozenset({"application/x-python-serialize", "application/x-yaml", "application/yaml"})
# The longest delivery the boundary reads: the contract's body limit in base64 (as on Redis), with
# room for kombu's headers and properties. A longer one is refused by its length alone, before any
# decoding or parsing: a 40 MB message must cost a pool process no more than a small one.
MAX_RAW_BYTES = MAX_ENVELOPE_BYTES * 4 // 3 + 64 * 1024
_FINGERPRINT_BYTES = 64 * 1024  # of each end of an oversized delivery: its identity in constant time


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be text without control characters")
    return value


_Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]


class TaskHeaders(BaseModel):
    """The Celery protocol 2 headers (docs/contract.md), strictly typed: a header of the wrong
    type is a reason to dead-letter the message, not an exception in the consumer."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    task: _Name
    id: _Name
    lang: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: Annotated[int, Field(ge=0)] | None = None
    shadow: str | None = None
    eta: dt.datetime | None = None
    expires: None = None
    retries: Annotated[int, Field(ge=0)] = 0
    timelimit: tuple[float | None, float | None] | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    origin: str | None = None
    ignore_result: bool | None = None
    replaced_task_nesting: Annotated[int, Field(ge=0)] | None = None
    stamped_headers: list[str] | None = None
    stamps: dict[str, Any] | None = None

    @field_validator("eta", mode="before")
    @classmethod
    def _iso_time(cls, value: Any) -> Any:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value

    @field_validator("timelimit", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("eta")
    @classmethod
    def _soon(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if aware > utcnow() + MAX_ETA_AHEAD:
            raise ValueError(f"is more than {MAX_ETA_AHEAD.seconds} s ahead")
        return aware


@dataclass(frozen=True, slots=True)
class Transported:
    """One message as a transport handed it over. Any field may hold anything."""

    headers: Any
    body: Any  # bytes or text, after the transport's own body encoding (Redis: base64)
    content_type: Any
    content_encoding: Any
    queue: Any  # the queue it was consumed from, or the routing key it claims


def decode(message: Transported) -> Incoming | Refused:
    """An ingestion message as the core's input, or its dead letter. Never raises."""
    try:
        return _decode(message)
    except Exception as error:  # noqa: BLE001 - a message must never stop the consumer
        logger.exception("a message could not be decoded; it is dead-lettered")
        return refused(message, *invalid_message(type(error).__name__), keep_body=False)


@dataclass(frozen=True, slots=True)
class Oversized:
    """What is kept of a delivery longer than ``MAX_RAW_BYTES``: its length and a fingerprint of
    its ends (kombu's Redis form puts the task id in the headers, after the body)."""

    size: int
    fingerprint: str

    @classmethod
    def of(cls, raw: bytes | str) -> Oversized | None:
        if len(raw) <= MAX_RAW_BYTES:
            return None
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        ends = data[:_FINGERPRINT_BYTES] + data[-_FINGERPRINT_BYTES:]
        return cls(len(raw), hashlib.sha256(ends).hexdigest())

    def refused(self, queue: Any) -> Refused:
        """Its dead letter: the size and the limit, nothing of its content."""
        detail = f"the message is {self.size} bytes; the limit is {MAX_ENVELOPE_BYTES} bytes of body (docs/contract.md)"
        delivery = Delivery(
            task=None,
            queue=queue if isinstance(queue, str) else None,
            received_at=utcnow(),
            message_id=f"oversized:{self.size}:{self.fingerprint}",
        )
        return Refused(Rejection(Reason.TOO_LARGE, detail, None), delivery)


def refused(message: Transported, reason: Reason, detail: str, keep_body: bool = True) -> Refused:
    """The dead letter of a whole message: its decoded body when there is one, the key never."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task = headers.get("task")
    delivery = Delivery(
        task=task if isinstance(task, str) else None,
        queue=message.queue if isinstance(message.queue, str) else None,
        received_at=utcnow(),
        message_id=message_id(message),
    )
    payload = _body_payload(message) if keep_body else None
    return Refused(Rejection(reason, detail, payload), delivery)


def message_id(message: Transported) -> str:
    """The message's identity across redeliveries: its task id, or else a digest of its body."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = headers.get("id")
    if isinstance(task_id, str) and 0 < len(task_id) <= 200:
        return f"id:{task_id}"
    body = message.body
    if not isinstance(body, bytes):
        body = (body if isinstance(body, str) else repr(body)).encode("utf-8", "surrogatepass")
    return f"body:{hashlib.sha256(body).hexdigest()}"


def invalid_message(why: str) -> tuple[Reason, str]:
    return Reason.INVALID_ENVELOPE, f"not a valid task message: {why}"


def unknown_task(task: str) -> tuple[Reason, str]:
    return Reason.UNKNOWN_TASK, f"no task named {task[:200]!r} here; see docs/contract.md"


def refused_content(content_type: str) -> tuple[Reason, str]:
    return Reason.UNDECODABLE, f"content type {content_type[:100]} is refused; send JSON"


def undecodable(error: BaseException) -> tuple[Reason, str]:
    return Reason.UNDECODABLE, f"cannot decode the body: {type(error).__name__}"


NO_TASK_HEADER = (Reason.INVALID_ENVELOPE, "not a Celery protocol 2 task message (no task header)")
EXPIRES_REFUSED = "expires is not part of the contract; send null"


def check(message: Transported, tasks: Collection[str]) -> Refused | None:
    """The transport-level rules, for any task: None when ``message`` is a well-formed task
    message for one of ``tasks``. Celery's consumer runs these before Celery's own code."""
    try:
        return _check(message, tasks)
    except Exception as error:  # noqa: BLE001 - a message must never stop the consumer
        logger.exception("a message could not be checked; it is dead-lettered")
        return refused(message, *invalid_message(type(error).__name__), keep_body=False)


def _check(message: Transported, tasks: Collection[str]) -> Refused | None:
    headers = message.headers
    if not isinstance(headers, dict):
        return refused(message, *invalid_message(f"the headers are {_kind(headers)}, not an object"))
    task = headers.get("task")
    if task is None:
        return refused(message, *NO_TASK_HEADER)
    if isinstance(task, str) and task not in tasks:
        return refused(message, *unknown_task(task))
    if headers.get("expires") is not None:
        return refused(message, *invalid_message(EXPIRES_REFUSED))
    try:
        TaskHeaders.model_validate(headers)
    except ValidationError as error:
        return refused(message, *invalid_message(describe(error)))
    if headers.get("compression") is not None:
        # kombu could decompress, but then a body's size is no longer bounded by the broker's.
        return refused(message, Reason.UNDECODABLE, "compressed bodies are refused; send JSON", keep_body=False)
    if not isinstance(message.content_type, str):
        return refused(message, *invalid_message(f"the content type is {_kind(message.content_type)}, not text"))
    if message.content_type != CONTENT_TYPE:
        return refused(message, *refused_content(message.content_type))
    encoding = message.content_encoding
    if encoding is not None and not (isinstance(encoding, str) and encoding.lower() in _UTF8):
        detail = f"content encoding {str(encoding)[:50]!r} is refused; send utf-8"
        return refused(message, Reason.UNDECODABLE, detail, keep_body=False)  # what it hides, scrubbing cannot see
    if not isinstance(message.body, bytes | str):
        return refused(message, *invalid_message(f"the body is {_kind(message.body)}, not text"))
    return None


def _decode(message: Transported) -> Incoming | Refused:
    refusal = _check(message, INGESTION_TASKS)
    if refusal is not None:
        return refusal
    task = message.headers["task"]
    try:
        payload = _json(message.body)
    except TooDeepToParse:
        return refused(message, *too_deep(), keep_body=False)
    except Exception as error:  # noqa: BLE001 - kombu raises DecodeError, RecursionError, UnicodeError...
        return refused(message, *undecodable(error))
    if not (
        isinstance(payload, list)
        and len(payload) == 3
        and isinstance(payload[0], list)
        and isinstance(payload[1], dict)
        and isinstance(payload[2], dict | None)
    ):
        return refused(message, *invalid_message("the body is not [args, kwargs, embed]"))
    args, kwargs, _ = payload
    delivery = _delivery(message, task)
    source = Source.WEBHOOK if task == WEBHOOK_TASK else Source.for_queue(delivery.queue)
    return Incoming(task, args, kwargs, source, delivery)


def _json(body: bytes | str) -> Any:
    """The body as kombu's JSON decoder reads it. orjson reads it five times faster, where it can:
    not kombu's typed values ({"__type__": ...}), NaN, huge integers or lone surrogates."""
    if ("__type__" if isinstance(body, str) else b"__type__") not in body:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as error:
            if error.msg == _ORJSON_TOO_DEEP:  # kombu's decoder would recurse into it
                raise TooDeepToParse from None
            # otherwise kombu decides, and says what is wrong
    return loads(body, CONTENT_TYPE, CONTENT_ENCODING, accept={CONTENT_TYPE})


_ORJSON_TOO_DEEP = "depth limit exceeded"  # orjson's reason past 1024 levels, far beyond the contract's


class TooDeepToParse(ValueError):
    """A body nested past what any decoder here parses."""


def too_deep() -> tuple[Reason, str]:
    return Reason.INVALID_EVENT, TOO_DEEP


def _delivery(message: Transported, task: str) -> Delivery:
    queue = message.queue if isinstance(message.queue, str) else None
    return Delivery(task=task, queue=queue, received_at=utcnow(), message_id=message_id(message))


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _body_payload(message: Transported) -> Any:
    """What a dead letter keeps of a body: JSON decoded and without its key, or a scrubbed text
    preview. Only JSON is ever parsed: a pickle or yaml body is kept as escaped text."""
    body = message.body
    content_type = message.content_type if isinstance(message.content_type, str) else None
    if not isinstance(body, bytes | str):
        return {"content_type": content_type, "body_type": type(body).__name__}
    if content_type == CONTENT_TYPE:
        try:
            return {
                "content_type": content_type,
                "body": without_key(loads(body, CONTENT_TYPE, CONTENT_ENCODING, accept={CONTENT_TYPE})),
            }
        except Exception:  # noqa: BLE001, S110 - not JSON after all: kept as a preview below
            pass
    elif content_type not in _TEXT_SERIALIZERS and not (content_type or "").startswith("text/"):
        # Bytes of an unknown kind (compressed, encrypted...) may hide a key from the scrubber.
        return {"content_type": content_type, "bytes": len(body)}
    return {"content_type": content_type, **dead_letters.text_preview(body)}
