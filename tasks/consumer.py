"""Celery's consumer, with every "drop and log the body" path replaced by a dead letter.

Celery's defaults log the raw body of a message it cannot handle (the API key included) and
acknowledge it, so the message is gone. Here each such message is stored with a reason and
then acknowledged; its body never reaches a log line.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from tasks.deadletters import dead_letter_message, settle
from userpath_worker.deadletter.models import Reason


class DeadLetteringConsumer(Consumer):
    def on_decode_error(self, message: Message, exc: Exception) -> None:
        stored = dead_letter_message(message, Reason.UNDECODABLE, f"cannot decode the body: {type(exc).__name__}")
        settle(message, stored)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        if isinstance(exc, ContentDisallowed):
            reason, detail = Reason.UNDECODABLE, f"content type {message.content_type} is refused; send JSON"
        else:
            reason, detail = Reason.INVALID_ENVELOPE, f"not a valid task message: {exc}"
        settle(message, dead_letter_message(message, reason, detail))

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        task = (message.headers or {}).get("task")
        detail = f"no task named {str(task)[:200]!r} here; see docs/contract.md"
        settle(message, dead_letter_message(message, Reason.UNKNOWN_TASK, detail))

    def on_unknown_message(self, body: Any, message: Message) -> None:
        detail = "not a Celery protocol 2 task message (no task header)"
        settle(message, dead_letter_message(message, Reason.INVALID_ENVELOPE, detail))
