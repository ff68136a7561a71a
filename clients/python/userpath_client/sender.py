"""The buffer and the thread that empties it: events wait in memory and a background thread hands
them to the broker in batches, retrying with backoff while it is down.

One ``Sender`` belongs to one process. After ``os.fork()`` the child does not reuse its parent's
(whose lock may be held, whose socket and thread are the parent's): it builds a new one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque

from kombu import Connection

from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, MAX_ENVELOPE_BYTES, WEBHOOKS_QUEUE
from userpath_client.errors import ClientClosed, NotSent, QueueFull
from userpath_client.publisher import Publisher
from userpath_client.wire import Encoder

logger = logging.getLogger("userpath.client")

_MAX_BACKOFF_SECONDS = 10.0


class Sender:
    """Queued events (each already canonical JSON) and the thread that publishes them."""

    def __init__(
        self,
        broker_url: str,
        encoder: Encoder,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue_size: int,
        broker_timeout: float,
    ) -> None:
        # Import the transport now: its first import registers a threading exit hook, which
        # fails if it happens in the sender thread while the interpreter exits.
        Connection(broker_url).get_transport_cls()
        self._encoder = encoder
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue_size = max_queue_size
        self._broker_timeout = broker_timeout

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, deque[bytes]] = {q: deque() for q in (EVENTS_QUEUE, JOBS_QUEUE, WEBHOOKS_QUEUE)}
        self._count = 0  # queued plus in flight: what counts against max_queue_size
        self._enqueued = dict.fromkeys(self._pending, 0)
        self._sent = dict.fromkeys(self._pending, 0)
        self._flushers = 0
        self._closed = False  # no new events
        self._stopping = False  # the thread is to end
        self._thread: threading.Thread | None = None
        self._publisher = Publisher(broker_url, broker_timeout)

    @property
    def pending(self) -> int:
        """Events queued or in flight."""
        return self._count

    def enqueue(self, queue: str, data: bytes) -> None:
        """Queue one event's (or webhook's) canonical JSON for ``queue``; never waits for the network."""
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
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="userpath-sender", daemon=True)
                self._thread.start()
            if queue == WEBHOOKS_QUEUE or len(pending) == self._batch_size:
                self._changed.notify_all()

    def flush(self, timeout: float | None) -> None:
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

    def close(self, timeout: float | None) -> None:
        """Take no more events, flush (up to ``timeout``), stop the thread, close the connection.

        Raises ``NotSent`` with the number of events that were given up, if any. A second close does nothing.
        """
        with self._changed:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(NotSent):  # counted below, once the thread has stopped
            self.flush(timeout)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self._broker_timeout + 1)
        with self._changed:
            given_up, self._count = self._count, 0
            for pending in self._pending.values():
                pending.clear()
        self._publisher.close()
        if given_up:
            raise NotSent(f"{given_up} events could not be sent before close() gave up", given_up)

    # -- the thread ------------------------------------------------------------------------

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
                chunk, size = [], self._encoder.envelope_overhead
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
                self._publisher.close()
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
        body, message = self._encoder.message(queue, chunk)
        self._publisher.publish(queue, body, message, self._encoder.lane, len(chunk))


def _backoff(failures: int) -> float:
    return min(0.1 * 2**failures, _MAX_BACKOFF_SECONDS)
