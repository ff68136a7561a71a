"""The producer client: queue events in memory, send them to the broker from a background thread.

    from userpath_client import UserPath

    userpath = UserPath("up_live_...", "redis://127.0.0.1:6379/0")
    userpath.track("Signed Up", user_id="user_123", properties={"plan": "pro"})
    userpath.job_event("Export Finished", user_id="user_123", job_name="exports", run_id="run_42")
    userpath.webhook("stripe", "evt_1", request.headers, request.body)

It speaks the wire contract of docs/contract.md with kombu directly (Celery protocol 2, JSON,
on Redis the list named as the queue, on RabbitMQ the queue's own exchange; never declaring
anything, so a producer user that may only publish is enough). It is its own distribution,
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
* Pending events are flushed at interpreter exit, and also when a ``multiprocessing`` child ends
  (it leaves through ``os._exit``, skipping ``atexit``, but runs multiprocessing's finalizers
  first) and when a Celery worker process shuts down (``worker_process_shutdown``, connected
  when Celery is already imported as the client is made; the client never imports Celery).
  SIGTERM kills a process without running any of these: ``flush_on_sigterm=True`` (or
  ``install_sigterm_flush()``) flushes first, then calls the previous handler.
* After ``os.fork()`` the child starts with an empty queue and its own connection and thread; the
  parent's events are sent by the parent only.
* The API key is never logged, put in an exception, or written to message headers.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing.util
import os
import signal
import sys
import threading
import warnings
import weakref
from collections.abc import Mapping
from datetime import datetime
from types import FrameType
from typing import Any

from userpath_client.contract import (
    BROKER_URL_VARIABLE,
    EVENTS_QUEUE,
    JOBS_QUEUE,
    KEY_SHAPE,
    MAX_BATCH_EVENTS,
    WEBHOOKS_QUEUE,
    key_display_form,
    key_problem,
)
from userpath_client.errors import InvalidKey, NotSent
from userpath_client.sender import Sender
from userpath_client.validation import event_json, job_context, webhook_json
from userpath_client.wire import Encoder

logger = logging.getLogger("userpath.client")


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
        flush_on_sigterm: bool = False,
    ) -> None:
        """``broker_url`` defaults to ``USERPATH_BROKER_URL``, the worker's own setting. The
        client speaks Redis and RabbitMQ; the worker's embedded SQLite broker needs SQLAlchemy
        installed beside it. ``queue_type`` is ignored (a ``DeprecationWarning`` says so): the
        client no longer declares the queues, so it need not declare them as the worker does.

        ``broker_timeout`` bounds each connect and publish; ``shutdown_timeout`` is how long
        ``close()`` (and interpreter exit) wait for the last events to be sent.

        ``flush_on_sigterm=True`` calls ``install_sigterm_flush()`` (from the main thread only).
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
        broker_url = broker_url or os.environ.get(BROKER_URL_VARIABLE, "")
        if not broker_url:
            raise ValueError(f"give broker_url, or set {BROKER_URL_VARIABLE} (redis://... or amqp://...)")
        if queue_type is not None:
            warnings.warn(
                "UserPath(queue_type=...) is ignored and will go: the client declares no queue, the worker does",
                DeprecationWarning,
                stacklevel=2,
            )

        self._api_key = api_key
        self._key_display = key_display_form(api_key)
        self._shutdown_timeout = shutdown_timeout
        # How this client's sender is made: once here, and again in a forked child.
        self._new_sender = functools.partial(
            Sender,
            broker_url,
            Encoder(api_key),
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queue_size=max_queue_size,
            broker_timeout=broker_timeout,
        )
        self._sender = self._new_sender()
        _open_clients.add(self)
        _connect_celery_shutdown()
        if flush_on_sigterm:
            install_sigterm_flush()

    def __repr__(self) -> str:
        return f"<UserPath {self._key_display} pending={self._sender.pending}>"

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
        data = event_json(event, user_id, anonymous_id, properties, timestamp, context, event_id)
        self._sender.enqueue(EVENTS_QUEUE, data)

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
        context = job_context(context, job_name, run_id)
        data = event_json(event, user_id, anonymous_id, properties, timestamp, context, event_id)
        self._sender.enqueue(JOBS_QUEUE, data)

    def webhook(self, provider: str, delivery_id: str, headers: Mapping[str, str], body: str | bytes) -> None:
        """Queue one third-party webhook delivery, forwarded as received, for ``userpath.webhooks``."""
        self._sender.enqueue(WEBHOOKS_QUEUE, webhook_json(self._api_key, provider, delivery_id, headers, body))

    # -- flushing and closing --------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> None:
        """Block until everything queued so far is with the broker; ``NotSent`` after ``timeout``.

        Events not sent in time stay queued and are still retried.
        """
        self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``, default ``shutdown_timeout``), then stop the sender.

        Raises ``NotSent`` with the number of events that were given up, if any.
        """
        _open_clients.discard(self)
        self._sender.close(self._shutdown_timeout if timeout is None else timeout)


# Every open client, so interpreter exit and fork can reach them without keeping them alive.
_open_clients: weakref.WeakSet[UserPath] = weakref.WeakSet()


@atexit.register
def _flush_at_exit(*_: object, **__: object) -> None:
    """Close every open client. Also multiprocessing's exit finalizer and a Celery signal receiver."""
    for client in list(_open_clients):
        try:
            client.close()
        except NotSent as error:
            logger.error("at exit: %s", error)


# -- processes that end without atexit ----------------------------------------------------------

_EXIT_PRIORITY = 100  # multiprocessing runs higher priorities first: ours before its queues' cleanup


def _flush_when_multiprocessing_exits(*_: object) -> None:
    # A multiprocessing child runs its finalizers and then calls os._exit, skipping atexit. Its
    # bootstrap empties the finalizers it inherited, then runs the after-fork hooks: so this is
    # registered at import (this process, or a spawned child) and again by that hook in each child.
    multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=_EXIT_PRIORITY)


_flush_when_multiprocessing_exits()
multiprocessing.util.register_after_fork(_flush_at_exit, _flush_when_multiprocessing_exits)


def _connect_celery_shutdown() -> None:
    # A Celery (billiard) worker process ends with os._exit after sending worker_process_shutdown.
    # Connected only if the application already imported Celery: the client must not import it.
    signals = sys.modules.get("celery.signals")
    if signals is not None:
        signals.worker_process_shutdown.connect(_flush_at_exit, weak=False, dispatch_uid="userpath_client")


_previous_sigterm_handler: Any = None


def install_sigterm_flush() -> None:
    """On SIGTERM, flush every client (each up to its ``shutdown_timeout``), then do what the
    previous handler did: call it, ignore the signal, or (the default) end the process as killed by
    SIGTERM. Call it from the main thread, after installing your own handler if you have one.
    Installing it twice does nothing.
    """
    global _previous_sigterm_handler
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)  # ValueError outside the main thread
    _previous_sigterm_handler = current


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    clients = list(_open_clients)
    if clients:
        # From a helper thread, joined with a bound: the signal may have interrupted this thread
        # inside a client, holding the lock the flush needs.
        helper = threading.Thread(target=_flush_each, args=(clients,), name="userpath-sigterm-flush", daemon=True)
        helper.start()
        helper.join(sum(client._shutdown_timeout for client in clients) + 1)
    previous = _previous_sigterm_handler
    if previous is signal.SIG_IGN:
        return
    if callable(previous):
        previous(signum, frame)
        return
    # SIG_DFL, or a handler not set from Python (which cannot be called): end as SIGTERM would.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _flush_each(clients: list[UserPath]) -> None:
    for client in clients:
        try:
            client.flush(client._shutdown_timeout)
        except NotSent as error:
            logger.error("on SIGTERM: %s", error)


def _after_fork_in_child() -> None:
    # The parent's queue is the parent's to send, and its socket and thread are not ours: a new
    # sender, empty. The old one is dropped without close(), which would talk on the parent's socket.
    for client in list(_open_clients):
        client._sender = client._new_sender()


os.register_at_fork(after_in_child=_after_fork_in_child)
