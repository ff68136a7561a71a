"""``userpath keys report-leak KEY [--url URL]`` (issue 23, item 4): a leak found by hand goes through
the same service as GitHub's reports: the key revoked, the leak audited, the owners e-mailed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.cli import ok, run
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.smtp import SmtpServer
from userpath_worker.audit.models import AuditEntry
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import AuthFailure, Environment, generate

OWNER = "owner@acme.io"
PASTE = "https://pastebin.example/raw/abc"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    server = SmtpServer()
    monkeypatch.setenv("USERPATH_SMTP_URL", server.url)
    yield server
    server.close()


@pytest.fixture
def leaked(database_url: str, smtp: SmtpServer) -> dict:
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", OWNER)
    return json.loads(ok("keys", "create", "--org", "Acme", "--name", "Server", "--as", OWNER, "--json").stdout)


def test_a_key_reported_by_hand_is_revoked_audited_and_its_owners_e_mailed(
    leaked: dict, engine: Engine, smtp: SmtpServer
) -> None:
    result = ok("keys", "report-leak", leaked["key"], "--url", PASTE)
    assert result.stdout.startswith(f"API key 'Server' ({leaked['display']}) of Acme was found in public at {PASTE}")
    assert "revoked" in result.stdout and leaked["key"] not in result.output
    with Session(engine) as session:
        assert KeyService(session, TEST_KEY_PEPPER).authenticate(leaked["key"]) is AuthFailure.EXPIRED
        key = session.get_one(ApiKey, leaked["id"])
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.exposed")).one()
    assert key.exposed_url == PASTE
    assert audited.actor == "operator"
    assert (audited.detail["source"], audited.detail["url"], audited.detail["action"]) == (
        "report-leak",
        PASTE,
        "revoked",
    )
    [mail] = smtp.received
    assert mail.recipients == [OWNER] and PASTE in mail.message.get_content()
    # Listed as expired, and exposed, in the CLI too.
    [listed] = json.loads(ok("keys", "list", "--org", "Acme", "--json").stdout)
    assert (listed["status"], listed["exposed_url"]) == ("expired", PASTE) and listed["exposed_at"]
    shown = ok("keys", "show", str(leaked["id"])).stdout
    assert re.search(rf"^EXPOSED \(UTC\): +\d{{4}}-\d\d-\d\d \d\d:\d\d at {re.escape(PASTE)}$", shown, re.M), shown


def test_the_key_can_come_from_standard_input_out_of_the_shells_history(leaked: dict, engine: Engine) -> None:
    reported = json.loads(ok("keys", "report-leak", "-", "--json", input=leaked["key"] + "\n").stdout)
    assert (reported["event"], reported["key_id"], reported["action"]) == ("api_key.exposed", leaked["id"], "revoked")
    assert reported["exposed_url"] is None
    again = json.loads(ok("keys", "report-leak", "-", "--json", input=leaked["key"]).stdout)
    assert again["action"] == "already_revoked"


def test_a_key_that_is_not_ours_is_one_line_and_exit_1(leaked: dict) -> None:
    for candidate in (generate(Environment.LIVE), "up_live_nonsense", "hello"):
        result = run("keys", "report-leak", candidate)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "Error: this is none of this installation's keys: nothing was revoked"
        ]
