"""The README's first command: ``userpath demo`` on the embedded default, no server needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.common.databases import table_dump
from userpath_worker.accounts import services as accounts
from userpath_worker.keys import tokens

pytestmark = pytest.mark.slow

USERPATH = str(Path(sys.executable).with_name("userpath"))


def test_the_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}
    result = subprocess.run(
        [USERPATH, "demo"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stored events (7):" in result.stdout
    assert "Dead letters (3):" in result.stdout
    for expected in (
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

    # It ran on SQLite files in the working directory, and left no key anywhere.
    assert {"userpath.db", "userpath-broker.db"} <= {path.name for path in tmp_path.iterdir()}
    engine = create_engine(f"sqlite:///{tmp_path / 'userpath.db'}")
    with engine.connect() as connection:
        dump = table_dump(connection, engine)
    engine.dispose()
    worker_log = (tmp_path / "userpath-demo-worker.log").read_text()
    assert not tokens.KEY_PATTERN.search(result.stdout + result.stderr + worker_log + dump)

    again = subprocess.run(
        [USERPATH, "demo"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0, again.stdout + again.stderr  # a second run reuses the demo org
    fresh = again.stdout.splitlines()[-1]
    assert fresh != link
    with Session(engine) as session:  # both links open the demo owner's invitation
        for url in (link, fresh):
            assert accounts.invitation_email(session, url.rpartition("/")[2]) == "owner@demo.example"
    engine.dispose()
