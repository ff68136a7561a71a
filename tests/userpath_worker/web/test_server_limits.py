"""``userpath web`` under slow clients (issue 20, reproduction 8): connections that send a header
line every 2 s took all of waitress' 100 connections and held them past its 120 s channel timeout,
and real requests timed out."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.common.browser import free_port, running_web, web_environment

SLOW_CONNECTIONS = 105


@contextlib.contextmanager
def slow_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that have started a request and send the rest a header line at a time."""
    opened = []
    try:
        for _ in range(count):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            opened.append(connection)
        yield opened
    finally:
        for connection in opened:
            connection.close()


def trickle(connections: list[socket.socket], line: int) -> int:
    """One more header line on each connection; how many the server has closed."""
    closed = 0
    for connection in connections:
        try:
            connection.sendall(f"X-Slow-{line}: {'x' * 20}\r\n".encode())
        except OSError:
            closed += 1
    return closed


def timed_get(url: str) -> float:
    """Seconds a normal request took to answer 200 (failing after 5)."""
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
    return time.monotonic() - started


def server_closed(connection: socket.socket) -> bool:
    connection.settimeout(0.5)
    try:
        return connection.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_connections_do_not_stop_the_web_server(tmp_path: Path) -> None:
    port = free_port()
    database = f"sqlite:///{tmp_path / 'userpath.db'}"
    environment = web_environment(database, f"sqla+sqlite:///{tmp_path / 'broker.db'}", port)
    with running_web(environment, tmp_path / "web.log") as web, slow_connections(port, SLOW_CONNECTIONS) as slow:
        answered = []

        def one_round(line: int) -> None:
            """A header line on every slow connection, a normal request, 2 s in all."""
            started = time.monotonic()
            trickle(slow, line)
            answered.append(timed_get(f"{web.url}/healthz"))
            time.sleep(max(0.0, 2 - (time.monotonic() - started)))

        for line in range(3):
            one_round(line)
        from userpath_worker.web.server import REQUEST_DEADLINE_SECONDS

        for line in range(3, int(REQUEST_DEADLINE_SECONDS / 2) + 3):  # past the deadline
            one_round(line)
        assert max(answered) < 2, answered  # a normal request answered all along
        # A request not in whole within the deadline of its first byte is cut off.
        assert sum(server_closed(connection) for connection in slow) == SLOW_CONNECTIONS
    assert "Traceback" not in web.log()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 40_000 + b"\r\n\r\n", 431),
        (
            b"POST /sign-in HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 2000000\r\n\r\n" + b"a" * 70_000,
            413,
        ),
    ],
    ids=["header-too-large", "body-too-large"],
)
def test_oversized_headers_and_bodies_are_refused_by_the_server(
    tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    port = free_port()
    environment = web_environment(f"sqlite:///{tmp_path / 'userpath.db'}", f"sqla+sqlite:///{tmp_path / 'b.db'}", port)
    with running_web(environment, tmp_path / "web.log"), socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            s.sendall(request_bytes)
        answer = s.recv(200).decode(errors="replace")
    assert answer.startswith(f"HTTP/1.1 {status} ") or answer.startswith("HTTP/1.0 " + str(status)), answer
