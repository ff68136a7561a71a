"""A real ``userpath edge`` process for end-to-end tests, and plain HTTP calls to it."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.common.browser import WebServer, free_port, running_server


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    document: Any


def call(
    url: str, body: bytes | dict[str, Any], key: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """POST ``body`` (a dict as JSON) to ``url``, with ``key`` as Basic user name when given."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    request = urllib.request.Request(url, data=data, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(
                response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
            )
    except urllib.error.HTTPError as error:
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read()))


@contextlib.contextmanager
def running_edge(environment: dict[str, str], log_path: Path, *arguments: str) -> Iterator[WebServer]:
    """``userpath edge`` on a free port of 127.0.0.1, once it answers."""
    port = free_port()
    with running_server(
        ["edge", "--port", str(port), *arguments], f"http://127.0.0.1:{port}", environment, log_path
    ) as edge:
        yield edge
