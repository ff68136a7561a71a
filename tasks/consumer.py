"""Celery's consumer, with every "drop and log the body" path replaced by a dead letter.

Celery's defaults log the raw body of a message it cannot handle (the API key included) and
acknowledge it, so the message is gone. Here each such message is stored with a reason and
then acknowledged; its body never reaches a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.consumer.consumer import promise
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from tasks.deadletters import (
    NO_TASK_HEADER,
    dead_letter_message,
    invalid_message,
    refused_content,
    settle,
    undecodable,
    unknown_task,
)


class DeadLetteringConsumer(Consumer):
    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], Any]:
        on_task_received = super().create_task_handler(promise)
        # kombu's Redis transport counts KeyError as a connection error; here it is a missing header.
        broker_errors = tuple(error for error in self.connection_errors + self.channel_errors if error is not KeyError)

        def on_task_received_or_dead_letter(message: Message) -> Any:
            try:
                return on_task_received(message)
            except broker_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - see below
                # Celery's strategy takes the body's shape on trust ([args, kwargs, embed], a hashable
                # task name...): what it raises on would stop the worker, and the message, never
                # acknowledged, would stop the next one too.
                settle(message, dead_letter_message(message, *invalid_message(type(exc).__name__)))

        return on_task_received_or_dead_letter

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        settle(message, dead_letter_message(message, *undecodable(exc)))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        verdict = (
            refused_content(message.content_type) if isinstance(exc, ContentDisallowed) else invalid_message(str(exc))
        )
        settle(message, dead_letter_message(message, *verdict))

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        settle(message, dead_letter_message(message, *unknown_task((message.headers or {}).get("task"))))

    def on_unknown_message(self, body: Any, message: Message) -> None:
        settle(message, dead_letter_message(message, *NO_TASK_HEADER))
