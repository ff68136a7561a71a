"""What goes on the broker: Celery protocol-2 bodies, headers and properties (docs/contract.md).

Events arrive here already encoded (canonical JSON, see ``validation``); this module only
assembles them into messages, so a message costs a join and a few small strings.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from userpath_client.contract import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    TRACK_TASK,
    WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
    key_display_form,
    lane_of,
)
from userpath_client.schemas import canonical_json

# kombu's Redis transport stores each priority in a list of its own; the contract says 0.
_PRIORITY = 0

# The third element of every protocol-2 body: no workflow, this is a plain task call.
EMBED = canonical_json({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


class Encoder:
    """The messages of one API key: envelopes of events, and webhooks one per message."""

    def __init__(self, api_key: str) -> None:
        self._key_json = canonical_json(api_key)
        self._key_display = key_display_form(api_key)  # the only form of the key headers may show
        self.lane = lane_of(api_key)
        # Envelope bytes other than its events; each event then costs its size plus a comma.
        self.envelope_overhead = len(self.envelope_body([], now_iso()))

    def message(self, queue: str, chunk: list[bytes], sent_at: str | None = None) -> tuple[bytes, dict[str, Any]]:
        """The body of the message carrying ``chunk`` to ``queue``, and its headers and properties
        as keyword arguments of kombu's ``Producer.publish``. ``sent_at``: the producer's clock when
        it sent the events (ISO-8601 with offset; the HTTP edge passes its caller's), else now."""
        if queue == WEBHOOKS_QUEUE:
            (webhook,) = chunk
            task = WEBHOOK_TASK
            argsrepr = f"({{'api_key': {self._key_display!r}, 'webhook': <{len(webhook)} bytes>}},)"
            body = webhook_body(webhook)
        else:
            sent_at = sent_at or now_iso()
            task = TRACK_TASK
            argsrepr = (
                f"({{'api_key': {self._key_display!r}, 'sent_at': {sent_at!r}, 'batch': <{len(chunk)} events>}},)"
            )
            body = self.envelope_body(chunk, sent_at)
        task_id = new_event_id()
        return body, {
            "headers": task_headers(task, task_id, argsrepr),
            "content_type": CONTENT_TYPE,
            "content_encoding": CONTENT_ENCODING,
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,  # persistent
        }

    def envelope_body(self, events: list[bytes], sent_at: str) -> bytes:
        """``[[envelope], {}, embed]``: the envelope is assembled from the events' canonical JSON.

        Each event was encoded once when queued (to measure it), so the caller mutating its
        properties afterwards cannot change what is sent.
        """
        envelope = b'{"api_key":%s,"batch":[%s],"sent_at":%s}' % (
            self._key_json,
            b",".join(events),
            canonical_json(sent_at),
        )
        return b"[[" + envelope + b"],{}," + EMBED + b"]"


def webhook_body(webhook: bytes) -> bytes:
    """``[[webhook], {}, embed]`` around a webhook delivery's canonical JSON."""
    return b"[[" + webhook + b"],{}," + EMBED + b"]"


def task_headers(task: str, task_id: str, argsrepr: str) -> dict[str, Any]:
    """Celery protocol-2 headers, as ``celery.app.amqp.as_task_v2`` writes them."""
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,  # the key's display form only: headers are logged by Celery
        "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def redis_document(body: bytes, message: dict[str, Any], queue: str) -> bytes:
    """The list item kombu's Redis transport would push for ``body`` and ``message`` (as
    ``Encoder.message`` makes them) onto ``queue`` (docs/contract.md, "(a) Redis")."""
    properties = {
        "correlation_id": message["correlation_id"],
        "reply_to": message["reply_to"],
        "delivery_mode": message["delivery_mode"],
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": _PRIORITY,
        "body_encoding": "base64",
        "delivery_tag": new_event_id(),
    }
    document = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": message["content_encoding"],
        "content-type": message["content_type"],
        "headers": message["headers"],
        "properties": properties,
    }
    # canonical_json's bytes, from orjson alone: the headers' nulls would send canonical_json to the
    # standard encoder (its NaN check), six times slower, and these are our own texts and numbers.
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def transport_options(scheme: str, timeout: float, confirm_each_publish: bool = True) -> dict[str, Any]:
    """kombu's transport options for a broker URL's scheme: every socket operation bounded by
    ``timeout``. ``confirm_each_publish`` False: RabbitMQ's confirms are awaited by the caller
    (``publisher.Confirms``, a batch at once), not by py-amqp after each publish."""
    if scheme.startswith(("amqp", "pyamqp")):
        # With publisher confirms a publish returns once RabbitMQ has the message, so a flushed
        # event is really with the broker.
        return {"confirm_publish": confirm_each_publish, "read_timeout": timeout, "write_timeout": timeout}
    if scheme.startswith("redis"):
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {}


_cached_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """Now, UTC, as ISO-8601 with offset and microseconds.

    The text up to the second is cached: ``datetime.isoformat()`` alone is a fifth of track()'s cost.
    """
    global _cached_second
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    cached, prefix = _cached_second
    if second != cached:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _cached_second = (second, prefix)  # one tuple: threads see the old or the new pair
    return f"{prefix}.{nanoseconds // 1000:06d}+00:00"


def new_event_id() -> str:
    """A random (version 4) UUID as text, formatted here: ``str(uuid.uuid4())`` costs twice as much."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"
