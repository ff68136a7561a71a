"""Dead-lettering of messages that never reach a task body: undecodable, refused content
types (pickle, yaml), unknown task names, and tasks that failed in an unexpected way."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from kombu.message import Message

from userpath_worker import metrics, runtime
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.services import Delivery, Rejection, without_key
from userpath_worker.keys import tokens

logger = logging.getLogger("userpath.worker")


# Why a whole message is dead-lettered, in the same words whichever consumer found it: Celery's
# (tasks/consumer.py, tasks/base.py) or the batched one on Redis (tasks/batching.py).
EXPIRES_REFUSED = "expires is not part of the contract; send null"
NO_TASK_HEADER = (Reason.INVALID_ENVELOPE, "not a Celery protocol 2 task message (no task header)")


def invalid_message(why: str) -> tuple[Reason, str]:
    return Reason.INVALID_ENVELOPE, f"not a valid task message: {why}"


def unknown_task(task: object) -> tuple[Reason, str]:
    return Reason.UNKNOWN_TASK, f"no task named {str(task)[:200]!r} here; see docs/contract.md"


def refused_content(content_type: str | None) -> tuple[Reason, str]:
    return Reason.UNDECODABLE, f"content type {content_type} is refused; send JSON"


def undecodable(error: BaseException) -> tuple[Reason, str]:
    return Reason.UNDECODABLE, f"cannot decode the body: {type(error).__name__}"


def failed_unexpectedly(error: BaseException) -> tuple[Reason, str]:
    return Reason.INTERNAL_ERROR, f"the task failed unexpectedly: {type(error).__name__}"


class MessageLike(Protocol):
    """What a dead letter keeps of a message: a kombu Message, or a raw Redis delivery (tasks/batching.py)."""

    @property
    def headers(self) -> dict[str, Any] | None: ...
    @property
    def delivery_info(self) -> dict[str, Any] | None: ...
    @property
    def body(self) -> Any: ...
    @property
    def content_type(self) -> str | None: ...


def rejection_of(message: MessageLike, reason: Reason, detail: str) -> tuple[Rejection, Delivery]:
    """The dead letter of a whole message, the raw key never in it."""
    headers = message.headers or {}
    delivery = Delivery(
        task=str(headers.get("task"))[:200] if headers.get("task") else None,
        queue=(message.delivery_info or {}).get("routing_key"),
        received_at=utcnow(),
    )
    return Rejection(reason, tokens.scrub_text(detail)[:500], _payload(message)), delivery


def dead_letter_message(message: MessageLike, reason: Reason, detail: str) -> bool:
    """Store the raw message as a dead letter; False when the database could not take it."""
    rejection, delivery = rejection_of(message, reason, detail)
    try:
        with runtime.session_factory().begin() as session:
            dead_letters.record(session, [rejection], delivery)
    except Exception as error:  # noqa: BLE001 - whatever it is, the message must not be lost
        logger.error("could not dead-letter a %s message (%s); it goes back to the queue", reason, type(error).__name__)
        return False
    logger.warning("dead-lettered a message: %s (task %s, queue %s)", reason, delivery.task, delivery.queue)
    metrics.DEAD_LETTERS.labels(reason.value, "unknown").inc()
    return True


def settle(message: Message, stored: bool) -> None:
    """Acknowledge a dead-lettered message, or give it back when it could not be recorded."""
    if stored:
        message.ack()
    else:
        time.sleep(1)  # the database is down: do not spin on the same message
        message.reject(requeue=True)


def _payload(message: MessageLike) -> Any:
    """The message body as a dead letter holds it. Only JSON is ever parsed: a pickle or yaml
    body is kept as escaped text and never deserialized."""
    body = message.body
    if message.content_type == "application/json":
        try:
            return {"content_type": message.content_type, "body": without_key(json.loads(body))}
        except (ValueError, RecursionError):
            pass
    preview = dead_letters.text_preview(body if isinstance(body, str | bytes) else repr(body))
    return {"content_type": message.content_type, **preview}
