"""waitress, set up for the web pages' load and for clients that would hold it up.

The pages serve a few owners at a time: tens of browsers, each with a few connections. The limits
below leave room for that many times over and bound what one client can hold:

- CONNECTION_LIMIT connections at once (waitress' default is 100), watched with poll() rather
  than select(), which stops at 1024 descriptors;
- CHANNEL_TIMEOUT_SECONDS without a byte, and a connection closes (waitress' default is 120 s);
- REQUEST_DEADLINE_SECONDS from a request's first byte to its last: a client that sends a header
  line now and then (slowloris) is otherwise never idle long enough for the channel timeout, and
  105 of them took every connection of the default server;
- MAX_HEADER_BYTES of request line and headers (431 beyond), and a body no larger than the forms'
  (413 beyond, before it is read: waitress' default is 1 GiB, buffered to disk).

What no setting here makes impossible, many addresses opening connections faster than the deadline
closes them, is the job of a buffering proxy in front (docs/operations.md): it reads each request
whole before it passes it on, so waitress sees only complete requests from one address.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from userpath_worker.web.app import MAX_FORM_BYTES

CONNECTION_LIMIT = 500
CHANNEL_TIMEOUT_SECONDS = 30
REQUEST_DEADLINE_SECONDS = 10
MAX_HEADER_BYTES = 32 * 1024


class DeadlineChannel(HTTPChannel):  # type: ignore[misc]
    """A connection that is closed when a request is not in whole REQUEST_DEADLINE_SECONDS after its
    first byte arrived (checked as each later chunk arrives; a silent one meets the channel timeout)."""

    request_started: float | None = None

    def handle_read(self) -> None:
        if self.request is None:  # what arrives now starts a request
            self.request_started = time.monotonic()
        super().handle_read()
        if self.request is None:  # nothing is half-read
            self.request_started = None
        elif (
            not self.requests  # none being served (waitress' own idle check spares those too)
            and self.request_started is not None
            and time.monotonic() - self.request_started > REQUEST_DEADLINE_SECONDS
        ):
            self.will_close = True  # closed by the main loop, as waitress closes idle channels


def make_server(app: Flask, host: str, port: int, threads: int, **options: Any) -> BaseWSGIServer | MultiSocketServer:
    """The waitress server of ``app`` on ``host``:``port`` with the limits above; ``options`` are
    more of waitress' own (the trusted proxy's). OSError when it cannot listen."""
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="userpath",
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=CHANNEL_TIMEOUT_SECONDS,
        cleanup_interval=min(CHANNEL_TIMEOUT_SECONDS, REQUEST_DEADLINE_SECONDS),
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_FORM_BYTES,
        asyncore_use_poll=True,
        **options,
    )
    listeners = server.map.values() if isinstance(server, MultiSocketServer) else [server]
    for listener in listeners:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = DeadlineChannel
    return server
