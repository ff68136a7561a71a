"""Messages exactly as producers put them on Redis and RabbitMQ (docs/contract.md, "(a) Redis" and
"(b) RabbitMQ (AMQP 0-9-1)").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import amqp

from userpath_client.contract import TRACK_TASK, WEBHOOK_TASK
from userpath_client.wire import task_headers as _task_headers  # the real producer's headers, byte for byte

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_CONTENT_TYPE = "application/json"
_CONTENT_ENCODING = "utf-8"
# Properties both transports carry under the same names: persistent, the only priority, no reply.
_DELIVERY_PROPERTIES = {"reply_to": "", "delivery_mode": 2, "priority": 0}


@dataclass(frozen=True)
class TaskMessage:
    """One Celery protocol-2 task message, before a transport wraps it."""

    task_id: str
    headers: dict[str, Any]
    body: bytes

    def redis_document(self, queue: str) -> bytes:
        """The list item kombu's Redis transport stores for this message on ``queue``."""
        document = {
            "body": base64.b64encode(self.body).decode(),
            "content-encoding": _CONTENT_ENCODING,
            "content-type": _CONTENT_TYPE,
            "headers": self.headers,
            "properties": {
                "correlation_id": self.task_id,
                **_DELIVERY_PROPERTIES,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def amqp_message(self) -> amqp.Message:
        """This message as an AMQP producer publishes it, properties and headers included."""
        return amqp.Message(
            self.body,
            content_type=_CONTENT_TYPE,
            content_encoding=_CONTENT_ENCODING,
            correlation_id=self.task_id,
            application_headers=self.headers,  # py-amqp's name for the headers table
            **_DELIVERY_PROPERTIES,
        )


def task_message(task: str, argument: Any) -> TaskMessage:
    """A ``task`` message with ``argument`` as its one positional argument."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[argument], {}, _EMBED], separators=(",", ":"), ensure_ascii=False).encode()
    return TaskMessage(task_id, _task_headers(task, task_id, "(<bench>,)"), body)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1_000_000:06d}+00:00"


def event(number: int, prefix: str, enqueued_at: float | None = None) -> dict[str, Any]:
    """A typical server-side event, about 300 bytes of JSON."""
    properties: dict[str, Any] = {"plan": "pro", "seats": number % 50, "path": f"/pricing/{number % 7}"}
    if enqueued_at is not None:
        properties["enqueued_at"] = enqueued_at
    return {
        "event_id": f"{prefix}-{number}",
        "event": "Page Viewed",
        "user_id": f"user-{number % 10_000}",
        "timestamp": now_iso(),
        "properties": properties,
        "context": {"ip": "203.0.113.9", "library": {"name": "bench", "version": "1"}},
    }


def envelopes(api_key: str, events: int, per_envelope: int, prefix: str) -> Iterator[TaskMessage]:
    """``events`` events in ``userpath.track`` messages of ``per_envelope`` events each."""
    for start in range(0, events, per_envelope):
        batch = [event(number, prefix) for number in range(start, min(start + per_envelope, events))]
        yield task_message(TRACK_TASK, {"api_key": api_key, "sent_at": now_iso(), "batch": batch})


def webhooks(api_key: str, count: int, prefix: str, stripe_secret: str | None = None) -> Iterator[TaskMessage]:
    """``count`` Stripe deliveries, one ``userpath.webhook`` message each; signed as Stripe signs
    them with ``stripe_secret`` when given (else with a signature nobody checks)."""
    for number in range(count):
        delivery_id = f"evt_{prefix}_{number}"
        body = json.dumps(
            {
                "id": delivery_id,
                "type": "invoice.paid",
                "data": {"object": {"object": "invoice", "customer": f"cus_{number % 1000}", "amount_paid": 4200}},
            }
        )
        delivery = {
            "api_key": api_key,
            "provider": "stripe",
            "delivery_id": delivery_id,
            "received_at": now_iso(),
            "headers": {"Content-Type": "application/json", "Stripe-Signature": stripe_signature(body, stripe_secret)},
            "body": body,
        }
        yield task_message(WEBHOOK_TASK, delivery)


def stripe_signature(body: str, secret: str | None) -> str:
    """Stripe's recipe: ``t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">``."""
    if secret is None:
        return "t=1714564806,v1=5257a869"
    t = int(time.time())
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.{body}'.encode(), hashlib.sha256).hexdigest()}"
