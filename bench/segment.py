"""Segment's analytics-python ``track()``, timed as ours is (``scenarios.client_track``): the same
number of calls with the same arguments, while its consumer thread posts the batches, here to a
local HTTP server that answers 200 to every POST (no network).

Its package is in the ``bench`` extra (``pip install '.[bench]'``); without it the comparison is
skipped, and the report says so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.harness import BenchError

# Seconds the consumer may take to post the last batches after the timed calls.
_DRAIN_TIMEOUT_SECONDS = 120


class _Sink(ThreadingHTTPServer):
    daemon_threads = True
    requests = 0
    events = 0  # the messages posted, counted by their ids without parsing the batch


class _Answer200(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as analytics-python's requests session expects
    server: _Sink

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests += 1
        self.server.events += body.count(b'"messageId"')
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silent: the report is the bench's output."""


@contextlib.contextmanager
def _local_sink() -> Iterator[_Sink]:
    """An HTTP server on 127.0.0.1, in a thread of this process, for as long as the block runs."""
    sink = _Sink(("127.0.0.1", 0), _Answer200)
    thread = threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
        thread.join(10)


def track_rate(calls: int) -> dict[str, Any] | None:
    """analytics-python's ``track()`` calls per second into its queue while it sends, or None if
    it is not installed."""
    try:
        from segment.analytics import Client
        from segment.analytics.version import VERSION
    except ImportError:
        return None
    properties = {"plan": "pro", "seats": 3}
    with _local_sink() as sink:
        host = f"http://127.0.0.1:{sink.server_address[1]}"
        # Its defaults otherwise, which match ours: batches of 100, sent every 0.5 s, one thread.
        client = Client("bench-write-key", host=host, sync_mode=False, max_queue_size=calls + 1)
        logging.getLogger("segment").setLevel(logging.ERROR)
        refused = 0
        started = time.perf_counter()
        for number in range(calls):
            queued, _ = client.track(user_id=f"user-{number % 1000}", event="Page Viewed", properties=properties)
            refused += not queued
        seconds = time.perf_counter() - started
        deadline = time.monotonic() + _DRAIN_TIMEOUT_SECONDS
        while client.queue.unfinished_tasks and time.monotonic() < deadline:  # flush(), bounded
            time.sleep(0.05)
        unsent = client.queue.unfinished_tasks
        client.join()
    if refused or unsent:
        raise BenchError(f"analytics-python refused {refused} and did not send {unsent} of {calls} events")
    return {
        "version": VERSION,
        "calls": calls,
        "calls_per_second_while_sending": calls / seconds,
        "requests_received": sink.requests,
        "events_received": sink.events,
    }
