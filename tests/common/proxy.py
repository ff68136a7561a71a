"""A small fault-injecting TCP proxy: cut a worker off its database or broker without touching
the shared server, then let it back in.

While cut, every live connection is closed and every new one is accepted and closed at once,
so clients see the server vanish (as on a failover or a dropped network) and fail fast
instead of hanging.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

LOCALHOST = "127.0.0.1"
MAX_CONNECTIONS = 64  # bounds the threads: one per connection
POLL_SECONDS = 0.2  # how often idle threads look at the stop and cut flags
CHUNK_BYTES = 64 * 1024


class FaultyProxy:
    def __init__(self, target_port: int) -> None:
        self.target = (LOCALHOST, target_port)
        self._listener = socket.create_server((LOCALHOST, 0))
        self._listener.settimeout(POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._threads: list[threading.Thread] = []
        self._cut = threading.Event()
        self._stopping = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Close every live connection and refuse new ones until ``restore()``."""
        self._cut.set()
        with self._lock:
            pairs = list(self._live.values())
        for pair in pairs:
            _close(*pair)

    def restore(self) -> None:
        self._cut.clear()

    def live_connections(self) -> int:
        with self._lock:
            return len(self._live)

    def close(self) -> None:
        self._stopping.set()
        self.cut()
        self._acceptor.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            if self._cut.is_set() or len(self._threads) >= MAX_CONNECTIONS:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            self.accepted += 1
            for sock in (client, upstream):
                sock.settimeout(30)  # a stuck peer ends the connection instead of pinning a thread
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes or the proxy cuts the connection."""
        key = id(client)
        with self._lock:
            self._live[key] = (client, upstream)
        peer = {client: upstream, upstream: client}
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ)
                selector.register(upstream, selectors.EVENT_READ)
                while not self._cut.is_set() and not self._stopping.is_set():
                    for ready, _ in selector.select(POLL_SECONDS):
                        data = ready.fileobj.recv(CHUNK_BYTES)  # type: ignore[union-attr]
                        if not data:
                            return
                        peer[ready.fileobj].sendall(data)  # type: ignore[index]
        except (OSError, ValueError):  # closed under us by cut(): that is the point
            return
        finally:
            with self._lock:
                self._live.pop(key, None)
            _close(client, upstream)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


@contextlib.contextmanager
def faulty_proxy(target_port: int) -> Iterator[FaultyProxy]:
    """A proxy to 127.0.0.1:``target_port`` that is always stopped, whatever the test does."""
    proxy = FaultyProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
