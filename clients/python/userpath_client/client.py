"""The producer client: queue events in memory, send them to the broker from a background thread.

    from userpath_client import UserPath

    userpath = UserPath("up_live_...", "redis://127.0.0.1:6379/0")
    userpath.track("Signed Up", user_id="user_123", properties={"plan": "pro"})
    userpath.job_event("Export Finished", user_id="user_123", job_name="exports", run_id="run_42")
    userpath.webhook("stripe", "evt_1", request.headers, request.body)

It speaks the wire contract of docs/contract.md with kombu directly (Celery protocol 2, JSON,
the default exchange with the queue's name as routing key). It is its own distribution,
``userpath-client``: a producer installs kombu, redis, pydantic and orjson, and no worker.

Guarantees:

* ``track()``, ``job_event()`` and ``webhook()`` never wait for the network. An invalid or
  oversized event raises ``InvalidEvent`` at the call; nothing is dropped later for it.
* The in-memory queue is bounded. When it is full the call raises ``QueueFull``: the event is not
  queued, and the caller decides whether to retry, drop or log it. We neither block the caller
  nor drop events silently.
* A failed send (broker down) keeps the events queued and retries with backoff. ``flush()`` and
  ``close()`` raise ``NotSent`` with the number of events they could not deliver in time.
* Each event gets its ``event_id`` when queued, so a batch re-sent after an uncertain failure is
  stored once (the worker deduplicates on ``event_id``).
* Pending events are flushed at interpreter exit. After ``os.fork()`` the child starts with an
  empty queue and its own connection and thread; the parent's events are sent by the parent only.
* The API key is never logged, put in an exception, or written to message headers.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kombu import Connection, Producer, Queue
from pydantic import ValidationError

from userpath_client.contract import (
    EVENT_ID_MAX,
    EVENT_NAME_MAX,
    EVENTS_QUEUE,
    JOBS_QUEUE,
    KEY_SHAPE,
    MAX_BATCH_EVENTS,
    MAX_ENVELOPE_BYTES,
    MAX_EVENT_BYTES,
    PERSON_ID_MAX,
    TRACK_TASK,
    WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
    key_display_form,
    key_problem,
    queue_arguments,
)
from userpath_client.schemas import EventIn, WebhookIn, canonical_json, describe, has_nul

logger = logging.getLogger("userpath.client")

# The third element of every protocol-2 body: no workflow, this is a plain task call.
_EMBED = canonical_json({"callbacks": None, "errbacks": None, "chain": None, "chord": None})

_MAX_BACKOFF_SECONDS = 10.0
# The worker's own settings of the same names, so one environment configures both.
BROKER_URL_VARIABLE = "USERPATH_BROKER_URL"
QUEUE_TYPE_VARIABLE = "USERPATH_QUEUE_TYPE"


class UserPathError(Exception):
    """Base class of every error this client raises."""


class InvalidKey(UserPathError, ValueError):
    """The API key is not a well-formed UserPath key."""


class InvalidEvent(UserPathError, ValueError):
    """An event or webhook breaks the wire contract (missing field, bad type, too large...)."""


class QueueFull(UserPathError):
    """``max_queue_size`` events are waiting to be sent; this one was not queued."""


class NotSent(UserPathError):
    """Events could not be handed to the broker in time. ``count`` says how many."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class ClientClosed(UserPathError):
    """The client was closed; create a new one to send more."""


class UserPath:
    """A thread-safe, fork-safe producer of UserPath events. See the module docstring."""

    def __init__(
        self,
        api_key: str,
        broker_url: str | None = None,
        *,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        max_queue_size: int = 10_000,
        broker_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        queue_type: str | None = None,
    ) -> None:
        """``broker_url`` defaults to ``USERPATH_BROKER_URL``, the worker's own setting, and
        ``queue_type`` (RabbitMQ: ``classic`` or ``quorum``) to ``USERPATH_QUEUE_TYPE``, else
        ``classic``. The client speaks Redis and RabbitMQ; the worker's embedded SQLite broker
        needs SQLAlchemy installed beside it.

        ``broker_timeout`` bounds each connect and publish; ``shutdown_timeout`` is how long
        ``close()`` (and interpreter exit) wait for the last events to be sent.
        """
        problem = key_problem(api_key)
        if problem == "malformed":
            raise InvalidKey(f"api_key is malformed: expected {KEY_SHAPE}")
        if problem == "bad_checksum":
            raise InvalidKey(f"api_key {key_display_form(api_key)} has a bad checksum: mistyped or truncated?")
        if not 1 <= batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_EVENTS}")
        if flush_interval <= 0 or max_queue_size < 1:
            raise ValueError("flush_interval must be positive and max_queue_size at least 1")

        self._api_key = api_key
        self._key_json = canonical_json(api_key)
        self._key_display = key_display_form(api_key)
        self._broker_url = broker_url or os.environ.get(BROKER_URL_VARIABLE, "")
        if not self._broker_url:
            raise ValueError(f"give broker_url, or set {BROKER_URL_VARIABLE} (redis://... or amqp://...)")
        queue_type = queue_type or os.environ.get(QUEUE_TYPE_VARIABLE) or "classic"
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be classic or quorum (from {QUEUE_TYPE_VARIABLE} if not given)")
        self._queue_arguments = queue_arguments(queue_type)
        # Import the transport now: its first import registers a threading exit hook, which
        # fails if it happens in the sender thread while the interpreter exits.
        Connection(self._broker_url).get_transport_cls()
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue_size = max_queue_size
        self._broker_timeout = broker_timeout
        self._shutdown_timeout = shutdown_timeout
        self._closed = False
        # Envelope bytes other than its events; each event then costs its size plus a comma.
        self._envelope_overhead = len(self._envelope_body([], _now_iso()))
        self._start_fresh()
        _open_clients.add(self)

    def __repr__(self) -> str:
        return f"<UserPath {self._key_display} pending={self._count}>"

    def __enter__(self) -> UserPath:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- producing -------------------------------------------------------------------------

    def track(
        self,
        event: str,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> None:
        """Queue one server-side event for ``userpath.events``. Raises ``InvalidEvent``/``QueueFull``."""
        data = self._event_json(event, user_id, anonymous_id, properties, timestamp, context, event_id)
        self._enqueue(EVENTS_QUEUE, data)

    def job_event(
        self,
        event: str,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        *,
        job_name: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """Queue one event reported by a background job for ``userpath.jobs``.

        ``job_name`` and ``run_id`` fill ``context["job"]``, which the contract reserves for them.
        """
        if job_name is not None or run_id is not None:
            if context is not None and "job" in context:
                raise InvalidEvent("give the job either as context['job'] or as job_name/run_id, not both")
            job = {"name": job_name, "run_id": run_id}
            context = {**(context or {}), "job": {k: v for k, v in job.items() if v is not None}}
        data = self._event_json(event, user_id, anonymous_id, properties, timestamp, context, event_id)
        self._enqueue(JOBS_QUEUE, data)

    def webhook(self, provider: str, delivery_id: str, headers: Mapping[str, str], body: str | bytes) -> None:
        """Queue one third-party webhook delivery, forwarded as received, for ``userpath.webhooks``."""
        if isinstance(body, bytes | bytearray):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidEvent(
                    f"webhook body from {provider!r} is not UTF-8 text; the contract carries text only"
                ) from None
        payload = {
            "api_key": self._api_key,
            "provider": provider,
            "delivery_id": delivery_id,
            "received_at": _now_iso(),
            "headers": dict(headers),
            "body": body,
        }
        try:
            WebhookIn.model_validate(payload)
        except ValidationError as error:
            raise InvalidEvent(f"invalid webhook: {describe(error)}") from None
        data = _storable_json(payload, "webhook from", provider)
        if len(data) > MAX_ENVELOPE_BYTES:
            raise InvalidEvent(
                f"webhook from {provider!r} is {len(data)} bytes as JSON; the limit is {MAX_ENVELOPE_BYTES}"
            )
        self._enqueue(WEBHOOKS_QUEUE, data)

    def _event_json(
        self,
        event: Any,
        user_id: Any,
        anonymous_id: Any,
        properties: Any,
        timestamp: Any,
        context: Any,
        event_id: Any,
    ) -> bytes:
        """The event as canonical JSON, with its id and timestamp, or ``InvalidEvent``.

        track() must cost a few microseconds, and pydantic is a large share of that; so the common
        case (plain str/dict/aware-datetime arguments) is checked here in plain Python against the
        same limits, and anything else is left to ``EventIn``, which has the last word.
        """
        if not _surely_valid(event, user_id, anonymous_id, properties, timestamp, context, event_id):
            raw = {
                "event": event,
                "user_id": user_id,
                "anonymous_id": anonymous_id,
                "timestamp": _now() if timestamp is None else timestamp,
                "context": context,
            }
            if properties is not None:
                raw["properties"] = properties
            if event_id is not None:
                raw["event_id"] = event_id
            try:
                model = EventIn.model_validate(raw)
            except ValidationError as error:
                name = repr(event) if isinstance(event, str) else "event"
                raise InvalidEvent(f"invalid event {name}: {describe(error)}") from None
            event, user_id, anonymous_id = model.event, model.user_id, model.anonymous_id
            properties, timestamp, context = model.properties, model.timestamp, model.context
            event_id = model.event_id

        fields = {
            "event_id": event_id or _new_event_id(),
            "event": event,
            "timestamp": _now_iso() if timestamp is None else timestamp.isoformat(),
            "properties": {} if properties is None else properties,
        }
        if user_id is not None:
            fields["user_id"] = user_id
        if anonymous_id is not None:
            fields["anonymous_id"] = anonymous_id
        if context is not None:
            fields["context"] = context
        data = _storable_json(fields, "event", event)
        if len(data) > MAX_EVENT_BYTES:
            raise InvalidEvent(f"event {event!r} is {len(data)} bytes as JSON; the limit is {MAX_EVENT_BYTES}")
        return data

    def _enqueue(self, queue: str, data: bytes) -> None:
        with self._lock:  # the condition's lock; entering it directly is cheaper
            if self._closed:
                raise ClientClosed("this UserPath client is closed")
            if self._count >= self._max_queue_size:
                raise QueueFull(
                    f"{self._count} events are waiting to be sent (max_queue_size); this one was not "
                    "queued. Is the broker reachable?"
                )
            pending = self._pending[queue]
            pending.append(data)
            self._count += 1
            self._enqueued[queue] += 1
            if self._sender is None:
                self._sender = threading.Thread(target=self._run, name="userpath-sender", daemon=True)
                self._sender.start()
            if queue == WEBHOOKS_QUEUE or len(pending) == self._batch_size:
                self._changed.notify_all()

    # -- flushing and closing --------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> None:
        """Block until everything queued so far is with the broker; ``NotSent`` after ``timeout``.

        Events not sent in time stay queued and are still retried.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            targets = dict(self._enqueued)
            self._flushers += 1
            self._changed.notify_all()
            try:
                while unsent := sum(max(0, targets[q] - self._sent[q]) for q in targets):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise NotSent(f"{unsent} events not sent after {timeout}s; still retrying", unsent)
                    self._changed.wait(remaining)
            finally:
                self._flushers -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``, default ``shutdown_timeout``), then stop the sender.

        Raises ``NotSent`` with the number of events that were given up, if any.
        """
        with self._changed:
            if self._closed:
                return
            self._closed = True  # no new events from here on
        _open_clients.discard(self)
        with contextlib.suppress(NotSent):  # counted below, once the sender has stopped
            self.flush(self._shutdown_timeout if timeout is None else timeout)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            sender = self._sender
        if sender is not None:
            sender.join(self._broker_timeout + 1)
        with self._changed:
            given_up, self._count = self._count, 0
            for pending in self._pending.values():
                pending.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if given_up:
            raise NotSent(f"{given_up} events could not be sent before close() gave up", given_up)

    def _start_fresh(self) -> None:
        """(Re)initialise every piece of state a process must not share with its parent."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, deque[bytes]] = {q: deque() for q in (EVENTS_QUEUE, JOBS_QUEUE, WEBHOOKS_QUEUE)}
        self._count = 0  # queued plus in flight: what counts against max_queue_size
        self._enqueued = dict.fromkeys(self._pending, 0)
        self._sent = dict.fromkeys(self._pending, 0)
        self._flushers = 0
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    # -- the sender thread -----------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        next_timed_flush = time.monotonic() + self._flush_interval
        while True:
            with self._changed:
                wake_at = next_timed_flush if not failures else time.monotonic() + _backoff(failures)
                while not self._stopping and not (failures == 0 and self._urgent()):
                    remaining = wake_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                if self._stopping:
                    return
                now = time.monotonic()
                # Partial batches go out on the timer, on flush/close, and when retrying.
                partial = bool(failures or self._flushers or self._closed or now >= next_timed_flush)
                if now >= next_timed_flush:
                    next_timed_flush = now + self._flush_interval
                chunks = self._take_chunks(partial)
            failures = 0 if self._send_chunks(chunks) else failures + 1

    def _urgent(self) -> bool:
        """Something to send before the timer: a full batch, a webhook, or a flush/close waiting."""
        events, jobs = len(self._pending[EVENTS_QUEUE]), len(self._pending[JOBS_QUEUE])
        return bool(
            max(events, jobs) >= self._batch_size
            or self._pending[WEBHOOKS_QUEUE]
            or ((self._flushers or self._closed) and (events or jobs))
        )

    def _take_chunks(self, partial: bool) -> list[tuple[str, list[bytes]]]:
        """Pop what is ready to send: one list per message. Popped events still count as queued."""
        chunks = []
        for queue, pending in self._pending.items():
            if queue == WEBHOOKS_QUEUE:
                chunks.extend((queue, [pending.popleft()]) for _ in range(len(pending)))
                continue
            while len(pending) >= self._batch_size or (partial and pending):
                chunk, size = [], self._envelope_overhead
                while pending and len(chunk) < self._batch_size:
                    if chunk and size + len(pending[0]) + 1 > MAX_ENVELOPE_BYTES:
                        break
                    size += len(pending[0]) + 1
                    chunk.append(pending.popleft())
                chunks.append((queue, chunk))
        return chunks

    def _send_chunks(self, chunks: list[tuple[str, list[bytes]]]) -> bool:
        """Publish each chunk in order; on the first failure put it and the rest back in front."""
        for index, (queue, chunk) in enumerate(chunks):
            try:
                self._publish(queue, chunk)
            except Exception as error:  # any broker or network failure: keep the events, retry
                self._drop_connection()
                with self._changed:
                    for failed_queue, failed in reversed(chunks[index:]):
                        self._pending[failed_queue].extendleft(reversed(failed))
                    waiting = self._count
                logger.warning(
                    "could not send to the broker (%s: %s); %d events kept in memory, retrying",
                    type(error).__name__,
                    error,
                    waiting,
                )
                return False
            with self._changed:
                self._count -= len(chunk)
                self._sent[queue] += len(chunk)
                self._changed.notify_all()
        return True

    def _publish(self, queue: str, chunk: list[bytes]) -> None:
        if queue == WEBHOOKS_QUEUE:
            (body,) = chunk
            task = WEBHOOK_TASK
            argsrepr = f"({{'api_key': {self._key_display!r}, 'webhook': <{len(body)} bytes>}},)"
            body = b"[[" + body + b"],{}," + _EMBED + b"]"
        else:
            sent_at = _now_iso()
            task = TRACK_TASK
            argsrepr = (
                f"({{'api_key': {self._key_display!r}, 'sent_at': {sent_at!r}, 'batch': <{len(chunk)} events>}},)"
            )
            body = self._envelope_body(chunk, sent_at)
        task_id = _new_event_id()
        self._ensure_producer().publish(
            body,
            exchange="",
            routing_key=queue,
            declare=[Queue(queue, queue_arguments=self._queue_arguments)],
            headers=_task_headers(task, task_id, argsrepr),
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
            reply_to="",
            delivery_mode=2,
            retry=False,  # we retry ourselves, keeping the events and backing off
        )

    def _envelope_body(self, events: list[bytes], sent_at: str) -> bytes:
        """``[[envelope], {}, embed]``: the envelope is assembled from the events' canonical JSON.

        Each event was encoded once when queued (to measure it), so the caller mutating its
        properties afterwards cannot change what is sent.
        """
        envelope = b'{"api_key":%s,"batch":[%s],"sent_at":%s}' % (
            self._key_json,
            b",".join(events),
            canonical_json(sent_at),
        )
        return b"[[" + envelope + b"],{}," + _EMBED + b"]"

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            scheme = self._broker_url.partition("://")[0]
            self._connection = Connection(
                self._broker_url,
                connect_timeout=self._broker_timeout,
                transport_options=_transport_options(scheme, self._broker_timeout),
            )
            # One connection attempt (kombu's default_channel would retry for connect_timeout):
            # the sender's own loop retries, with backoff and a warning.
            self._connection.connect()
            self._producer = Producer(self._connection.channel())
        return self._producer

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = self._producer = None


def _transport_options(scheme: str, timeout: float) -> dict[str, Any]:
    if scheme.startswith(("amqp", "pyamqp")):
        # With publisher confirms a publish returns once RabbitMQ has the message, so a flushed
        # event is really with the broker.
        return {"confirm_publish": True, "read_timeout": timeout, "write_timeout": timeout}
    if scheme.startswith("redis"):
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {}


def _task_headers(task: str, task_id: str, argsrepr: str) -> dict[str, Any]:
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


def _surely_valid(
    event: Any, user_id: Any, anonymous_id: Any, properties: Any, timestamp: Any, context: Any, event_id: Any
) -> bool:
    """True only for arguments ``EventIn`` certainly accepts as they are; False means "ask EventIn"."""
    return (
        type(event) is str
        and 0 < len(event) <= EVENT_NAME_MAX
        and (user_id is not None or anonymous_id is not None)
        and (user_id is None or (type(user_id) is str and 0 < len(user_id) <= PERSON_ID_MAX))
        and (anonymous_id is None or (type(anonymous_id) is str and 0 < len(anonymous_id) <= PERSON_ID_MAX))
        and (event_id is None or (type(event_id) is str and 0 < len(event_id) <= EVENT_ID_MAX))
        and (timestamp is None or (type(timestamp) is datetime and timestamp.utcoffset() is not None))
        and (properties is None or _plain_object(properties))
        and (context is None or _plain_object(context))
    )


def _plain_object(value: Any) -> bool:
    return type(value) is dict and all(type(key) is str for key in value)


def _storable_json(value: dict[str, Any], kind: str, name: str) -> bytes:
    """``canonical_json(value)``, or ``InvalidEvent`` for what the worker could not store."""
    try:
        data = canonical_json(value)
    except (TypeError, ValueError, RecursionError) as error:  # not JSON, NaN, lone surrogate, too deep
        raise InvalidEvent(f"{kind} {name!r} is not storable JSON: {error}") from None
    if has_nul(data):
        raise InvalidEvent(f"{kind} {name!r} contains a NUL character, which the database cannot store")
    if b'"__type__"' in data and _has_transport_marker(value):
        raise InvalidEvent(
            f"{kind} {name!r} has an object with exactly the keys __type__ and __value__, which the "
            "broker's JSON decoder (kombu) turns into a Python object; rename one of them"
        )
    return data


def _has_transport_marker(value: Any) -> bool:
    if isinstance(value, dict):
        return value.keys() == {"__type__", "__value__"} or any(map(_has_transport_marker, value.values()))
    if isinstance(value, list | tuple):
        return any(map(_has_transport_marker, value))
    return False


def _now() -> datetime:
    return datetime.now(UTC)


_cached_second: tuple[int, str] = (-1, "")


def _now_iso() -> str:
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


def _new_event_id() -> str:
    """A random (version 4) UUID as text, formatted here: ``str(uuid.uuid4())`` costs twice as much."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def _backoff(failures: int) -> float:
    return min(0.1 * 2**failures, _MAX_BACKOFF_SECONDS)


# Every open client, so interpreter exit and fork can reach them without keeping them alive.
_open_clients: weakref.WeakSet[UserPath] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for client in list(_open_clients):
        try:
            client.close()
        except NotSent as error:
            logger.error("at exit: %s", error)


def _after_fork_in_child() -> None:
    # The parent's queue is the parent's to send, and its socket and thread are not ours: start
    # empty. The old connection objects are dropped without close(), which would talk on the
    # parent's socket.
    for client in list(_open_clients):
        client._start_fresh()


os.register_at_fork(after_in_child=_after_fork_in_child)
