"""``userpath orgs set-limits``: an organization's own rate at the edge, stored for every edge
process to read, and back to the default; usage mistakes exit 2, in one line."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from config.settings import get_settings
from tests.common.cli import ok, run
from userpath_worker.organizations import services as organizations


@pytest.fixture
def acme(database_url: str) -> None:
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.io")


def test_an_organization_gets_its_own_rate_and_goes_back_to_the_default(acme: None, engine: Engine) -> None:
    said = ok("orgs", "set-limits", "--org", "Acme", "--events-per-second", "50", "--burst", "500").output
    assert said == "'Acme' may send 50 events a second, in bursts of up to 500.\n"
    with Session(engine) as session:
        assert organizations.own_rate_limit(session, 1) == organizations.RateLimit(50, 500)
    again = ok("orgs", "set-limits", "--org", "Acme", "--events-per-second", "7", "--burst", "70", "--json").output
    assert json.loads(again) == {"id": 1, "name": "Acme", "events_per_second": 7, "burst": 70, "default": False}

    back = json.loads(ok("orgs", "set-limits", "--org", "Acme", "--default", "--json").output)
    assert back == {"id": 1, "name": "Acme", "events_per_second": 2000, "burst": 20000, "default": True}
    with Session(engine) as session:
        assert organizations.own_rate_limit(session, 1) is None
    assert ok("orgs", "set-limits", "--org", "Acme", "--default").output == (
        "'Acme' may send 2000 events a second, in bursts of up to 20000 "
        "(USERPATH_EDGE_EVENTS_PER_SECOND and USERPATH_EDGE_BURST).\n"
    )


def test_without_a_default_limit_the_default_is_no_limit(acme: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_EDGE_EVENTS_PER_SECOND", "0")
    get_settings.cache_clear()  # read again, as a new command would
    back = json.loads(ok("orgs", "set-limits", "--org", "Acme", "--default", "--json").output)
    assert (back["events_per_second"], back["burst"]) == (None, None)


@pytest.mark.parametrize(
    "arguments",
    [
        (),
        ("--events-per-second", "5"),
        ("--burst", "5"),
        ("--events-per-second", "5", "--burst", "5", "--default"),
        ("--burst", "5", "--default"),
    ],
)
def test_set_limits_says_what_to_give_in_one_line_and_exits_2(acme: None, arguments: tuple[str, ...]) -> None:
    result = run("orgs", "set-limits", "--org", "Acme", *arguments)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: give either --events-per-second N --burst N, or --default"
    )


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (("--events-per-second", "0", "--burst", "5"), "0 is not in the range 1<=x<=10000000"),
        (("--events-per-second", "5", "--burst", "x"), "'x' is not a valid integer"),
    ],
)
def test_set_limits_refuses_numbers_it_cannot_apply_with_exit_2(
    acme: None, arguments: tuple[str, ...], says: str
) -> None:
    result = run("orgs", "set-limits", "--org", "Acme", *arguments)
    assert result.exit_code == 2 and says in result.output


def test_an_unknown_organization_is_one_line_and_exit_1(acme: None) -> None:
    result = run("orgs", "set-limits", "--org", "Acme Inc", "--events-per-second", "5", "--burst", "5")
    assert result.exit_code == 1
    assert result.output == "Error: organization 'Acme Inc' not found; did you mean 'Acme'?\n"
