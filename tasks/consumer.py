"""Celery's consumer, judging each message at the boundary before Celery's own code sees it,
and with every "drop and log the body" path replaced by a dead letter.

Celery takes a message's headers and body on trust (a hashable task name, a pair of time
limits, a parsable ETA...): what it raises on would stop the worker, and the message, never
acknowledged, would stop the next one too. Its defaults log the raw body of a message it cannot
handle (the API key included) and acknowledge it, so the message is gone. Here the boundary
decoder's rules run first, and each message refused is stored with a reason, then acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.consumer.consumer import promise
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from tasks.deadletters import dead_letter_message, settle, transported
from tasks.ingestion.decoder import NO_TASK_HEADER, check, invalid_message, refused_content, undecodable, unknown_task


class DeadLetteringConsumer(Consumer):
    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], Any]:
        on_task_received = super().create_task_handler(promise)
        # kombu's Redis transport counts KeyError as a connection error; here it is a missing header.
        broker_errors = tuple(error for error in self.connection_errors + self.channel_errors if error is not KeyError)

        def on_task_received_or_dead_letter(message: Message) -> Any:
            refusal = check(transported(message), self.app.tasks)
            if refusal is not None:
                return settle(message, refusal)
            try:
                return on_task_received(message)
            except broker_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - what the boundary's rules did not foresee
                dead_letter_message(message, *invalid_message(type(exc).__name__))

        return on_task_received_or_dead_letter

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        dead_letter_message(message, *undecodable(exc))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        if isinstance(exc, ContentDisallowed):
            dead_letter_message(message, *refused_content(str(message.content_type)))
        else:
            dead_letter_message(message, *invalid_message(str(exc)))

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        dead_letter_message(message, *unknown_task(str((message.headers or {}).get("task"))))

    def on_unknown_message(self, body: Any, message: Message) -> None:
        dead_letter_message(message, *NO_TASK_HEADER)
