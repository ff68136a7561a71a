"""The README's first command: ``userpath demo`` on the embedded default, no server needed: through
the broker and through a real edge, and the snippet and curl line it prints work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.common.browser import free_port, running_server
from tests.common.databases import table_dump
from userpath_worker.accounts import services as accounts
from userpath_worker.keys import tokens

pytestmark = pytest.mark.slow

USERPATH = str(Path(sys.executable).with_name("userpath"))


def test_the_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}
    edge_url = f"http://127.0.0.1:{free_port()}"  # where the curl line sends (by default 127.0.0.1:8080)
    environment["USERPATH_EDGE_BASE_URL"] = edge_url
    result = subprocess.run(
        [USERPATH, "demo"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stored events (10):" in result.stdout
    assert "Dead letters (3):" in result.stdout
    assert "and 3 events through the edge at http://127.0.0.1:" in result.stdout
    for expected in (
        "Plan Upgraded",  # Segment's /v1/track, and a /v1/batch of an identify and a page, through the edge
        "$identify",
        "$page",
        "stripe.invoice.paid",
        "github.issues.opened",
        "Invoices Sent",
        "unknown_key",
        "deleted_key",
        "invalid_event",
    ):
        assert expected in result.stdout
    # It ends with how to open the web pages as the demo's owner: the command, then a one-time link.
    *_, how, link = result.stdout.splitlines()
    assert "as the demo's owner (owner@demo.example): run `userpath web`" in how
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/invitations/[A-Za-z0-9_-]{43}", link), link

    assert result.stdout.startswith("Organization 'Demo' (created now), owned by owner@demo.example, with a new key")

    # It ran on SQLite files in the working directory, and printed its key once, in a snippet that
    # sends an event with it; the key is nowhere else.
    assert {"userpath.db", "userpath-broker.db"} <= {path.name for path in tmp_path.iterdir()}
    engine = create_engine(f"sqlite:///{tmp_path / 'userpath.db'}")
    with engine.connect() as connection:
        dump = table_dump(connection, engine)
    logs = (tmp_path / "userpath-demo-worker.log").read_text() + (tmp_path / "userpath-demo-edge.log").read_text()
    assert 'POST /v1/batch\\" 200' in logs  # the edge's access log, a JSON line
    [key] = set(tokens.KEY_PATTERN.findall(result.stdout))  # in the snippet and the curl line
    assert not tokens.KEY_PATTERN.search(result.stderr + logs + dump)
    start = result.stdout.index("\n", result.stdout.index("Send an event yourself")) + 1
    snippet = result.stdout[start : result.stdout.index("\nEOF\n") + len("\nEOF\n")]
    assert snippet.splitlines()[0].endswith(" - <<'EOF'"), snippet  # this Python, reading the lines below
    assert key in snippet
    sent = subprocess.run(["sh", "-c", snippet], cwd=tmp_path, env=environment, capture_output=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    [curl] = [line for line in result.stdout.splitlines() if line.startswith("curl ")]
    assert key in curl and f"{edge_url}/v1/track" in curl
    embedded = {  # the demo's files, from the repository, where running_server starts it
        **environment,
        "USERPATH_DATABASE_URL": f"sqlite:///{tmp_path / 'userpath.db'}",
        "USERPATH_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'userpath-broker.db'}",
    }
    edge_port = edge_url.rpartition(":")[2]
    with running_server(["edge", "--port", edge_port], edge_url, embedded, tmp_path / "edge.log"):
        curled = subprocess.run(["sh", "-c", curl], env=environment, capture_output=True, text=True, timeout=60)
    assert curled.returncode == 0 and curled.stdout == '{"success":true}', curled.stdout + curled.stderr

    again = subprocess.run(
        [USERPATH, "demo"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0, again.stdout + again.stderr  # a second run reuses the demo org
    assert again.stdout.startswith("Organization 'Demo' (from an earlier run), owned by owner@demo.example")
    # Its worker stored the snippet's and the curl line's events too, sent with the first run's key
    # while none ran.
    assert "Stored events (12):" in again.stdout and "Snippet Sent" in again.stdout and "Curl Sent" in again.stdout
    [second_key] = set(tokens.KEY_PATTERN.findall(again.stdout))
    with engine.connect() as connection:
        active = connection.execute(text("SELECT display FROM api_keys WHERE deleted_at IS NULL")).all()
    assert [display for (display,) in active] == [tokens.display_form(second_key)]  # the first run's is gone
    fresh = again.stdout.splitlines()[-1]
    assert fresh != link
    with Session(engine) as session:  # the fresh link opens the demo owner's invitation, and replaces the first
        assert accounts.link_form(session, fresh.rpartition("/")[2]).email == "owner@demo.example"
        with pytest.raises(accounts.InvalidInvitation):
            accounts.link_form(session, link.rpartition("/")[2])
    engine.dispose()
