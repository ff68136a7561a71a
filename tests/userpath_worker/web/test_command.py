"""``userpath web``: waitress serves the pages on the embedded default with no other setup; a busy
port and a missing secret are one line each."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.common.cli import ok
from userpath_worker.accounts.secret import SECRET_FILE

USERPATH = str(Path(sys.executable).with_name("userpath"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without its USERPATH_* settings, plus ``settings``."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}
    return {**inherited, **settings}


def get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_userpath_web_serves_the_pages_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    command = [USERPATH, "web", "--port", str(port)]
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=tmp_path, env=environment(), stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(server, port, log)
        status, _, body = get(f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, "ok")
        status, headers, body = get(f"http://127.0.0.1:{port}/sign-in")
        assert status == 200 and 'name="email"' in body
        assert headers["Server"] == "userpath"  # waitress, not a development server
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        # The schema was made and a secret generated beside the database, readable by its owner only.
        assert (tmp_path / "userpath.db").exists()
        assert (tmp_path / SECRET_FILE).stat().st_mode & 0o077 == 0

        # A second server on the same port: one line, exit 1.
        busy = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1
        assert (
            busy.stderr.strip().splitlines()[-1] == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"Serving the web pages on http://127.0.0.1:{port}" in log.read_text()


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        ({}, "USERPATH_WEB_SECRET is not set; set it to a long random value, the same for every web process"),
        (
            {"USERPATH_WEB_SECRET": "w" * 32},
            # Keys made without it would be refused by a peppered worker, or could never be peppered.
            "USERPATH_KEY_PEPPER is not set; against PostgreSQL set it to a long random value, the same for every "
            "worker, CLI and web process",
        ),
    ],
)
def test_userpath_web_needs_its_secrets_against_postgresql(
    postgres_url: str, tmp_path: Path, settings: dict[str, str], missing: str
) -> None:
    completed = subprocess.run(
        [USERPATH, "web", "--port", str(free_port())],
        cwd=tmp_path,
        env=environment(USERPATH_DATABASE_URL=postgres_url, **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f'Error: {missing} (python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
    ]


def test_behind_a_trusted_proxy_the_client_address_is_the_forwarded_one(tmp_path: Path) -> None:
    port = free_port()
    database = tmp_path / "userpath.db"
    settings = {"USERPATH_DATABASE_URL": f"sqlite:///{database}", "USERPATH_WEB_BASE_URL": f"http://127.0.0.1:{port}"}
    command = [USERPATH, "web", "--port", str(port), "--trusted-proxy", "127.0.0.1"]
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=tmp_path, env=environment(**settings), stdout=output, stderr=output)
    try:
        wait_until_serving(server, port, log)
        created = subprocess.run(
            [USERPATH, "orgs", "create", "Acme", "--owner", "owner@example.com"],
            env=environment(**settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        assert sign_in_status(port, f"http://127.0.0.1:{port}", {"X-Forwarded-For": "203.0.113.7"}) == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(database) as connection:
        [(detail,)] = connection.execute("SELECT detail FROM audit_log WHERE action = 'sign_in_failed'").fetchall()
    assert json.loads(detail) == {"client_address": "203.0.113.7"}


def sign_in_status(port: int, origin: str, headers: dict[str, str] | None = None) -> int:
    """The status of a well-formed sign-in (a wrong password) sent with ``origin`` (and ``headers``):
    401 once past the Origin check, 403 when refused by it."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"http://127.0.0.1:{port}/sign-in", timeout=5).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    form = urllib.parse.urlencode({"csrf_token": token, "email": "owner@example.com", "password": "wrong one"})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sign-in", data=form.encode(), headers={"Origin": origin, **(headers or {})}
    )
    try:
        return opener.open(request, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize(
    ("settings", "opened_at"),
    [({}, "http://127.0.0.1:{port}"), ({"USERPATH_WEB_BASE_URL": "https://userpath.example.com"}, None)],
    ids=["unset", "set"],
)
def test_the_default_base_url_follows_the_port_served_and_a_setting_wins(
    tmp_path: Path, settings: dict[str, str], opened_at: str | None
) -> None:
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [USERPATH, "web", "--port", str(port)],
            cwd=tmp_path,
            env=environment(**settings),
            stdout=output,
            stderr=output,
        )
    try:
        wait_until_serving(server, port, log)
        status = sign_in_status(port, origin=f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    base_url = opened_at.format(port=port) if opened_at else settings["USERPATH_WEB_BASE_URL"]
    assert f"; open {base_url} (" in log.read_text()
    assert status == (401 if opened_at else 403)


def wait_until_serving(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert server.poll() is None, log.read_text()
        try:
            get(f"http://127.0.0.1:{port}/healthz")
            return
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


def test_userpath_web_is_a_command_with_host_and_port() -> None:
    help_text = ok("web", "--help").output
    assert "--host" in help_text and "--port" in help_text
