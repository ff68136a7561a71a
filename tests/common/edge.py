"""A real ``userpath edge`` process for end-to-end tests, and plain HTTP calls to it."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.common.browser import USERPATH, free_port
from tests.common.workers import REPOSITORY, stop, wait_for


@dataclass(frozen=True)
class EdgeServer:
    url: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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
            return Reply(response.status, dict(response.headers), json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), json.loads(error.read()))


@contextlib.contextmanager
def running_edge(environment: dict[str, str], log_path: Path, *arguments: str) -> Iterator[EdgeServer]:
    """``userpath edge`` on a free port, once ``/healthz`` answers; stopped (killed if need be) on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [USERPATH, "edge", "--port", str(port), *arguments],
            env=environment,
            cwd=REPOSITORY,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _healthy(url) or process.poll() is not None, 60, f"{url}/healthz to answer")
        if process.poll() is not None:
            raise AssertionError(
                f"userpath edge exited at start ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        yield EdgeServer(url, log_path, process)
    finally:
        stop(process)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
