"""``userpath events erase``: a person's events and dead letters, erased through the real CLI on a
fresh SQLite file and on PostgreSQL; the events and dead letters are made by the real ingestion
service, as the worker makes them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from config.settings import get_settings
from tests.common.cli import ok, run
from tests.common.signing import TEST_SECRET_KEY
from tests.common.terminal import in_a_terminal
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import make_engine, utcnow
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events.models import Source
from userpath_worker.events.services import Ingestor
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.webhooks.services import SigningKeys

OWNER = "owner@acme.io"
ERASE = ("events", "erase", "--org", "Acme", "--user-id", "u1", "--as", OWNER)


@pytest.fixture
def send(database_url: str) -> Iterator[Any]:
    """``send(key, *events)``: one ``userpath.track`` message, ingested as the worker would."""
    engine = make_engine(database_url)
    ingestor = Ingestor(
        sessionmaker(engine),
        KeyAuthenticator(get_settings().key_pepper, ttl=0.0),
        SigningKeys(lambda: TEST_SECRET_KEY, ttl=0.0),
    )

    def send(key: str, *events: dict[str, Any]) -> None:
        delivery = Delivery(TRACK_TASK, EVENTS_QUEUE, utcnow())
        ingestor.track([{"api_key": key, "batch": list(events)}], {}, Source.SERVER, delivery)

    yield send
    engine.dispose()


def an_event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "event": "Signed Up", "timestamp": utcnow().isoformat(), **fields}


def new_key(org: str, owner: str) -> str:
    return ok("keys", "create", "--org", org, "--name", "Server", "--as", owner).stdout.strip()


@pytest.fixture
def acme(send: Any) -> str:
    """Acme with u1's and u2's events and dead letters; Beta with a u1 of its own. Returns Acme's key."""
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", OWNER)
    ok("members", "invite", "--org", "Acme", "member@acme.io", "--role", "admin")
    ok("orgs", "create", "Beta", "--owner", "owner@beta.io")
    key = new_key("Acme", OWNER)
    send(
        key,
        an_event("a1", user_id="u1"),
        an_event("a2", user_id="u1"),
        an_event("a3", user_id="u2"),
        an_event("bad-u1", user_id="u1", timestamp="2026-03-01T12:00:00"),  # naive: a dead letter
        an_event("bad-u2", user_id="u2", timestamp="2026-03-01T12:00:00"),
        an_event("nul-u1", user_id="u1", properties={"x": "a\x00b"}),  # kept only as a text preview
    )
    send(new_key("Beta", "owner@beta.io"), an_event("b1", user_id="u1"))
    return key


def events_of(org: str) -> list[tuple[str, str]]:
    return [(e["event_id"], e["user_id"]) for e in json.loads(ok("events", "list", "--org", org, "--json").stdout)]


def dead_letters_of(org: str) -> list[Any]:
    return [d["payload"] for d in json.loads(ok("deadletter", "list", "--org", org, "--json").stdout)]


def test_the_persons_events_and_dead_letters_are_erased_and_others_kept(
    acme: str, send: Any, database_url: str
) -> None:
    result = ok(*ERASE, "--yes")
    assert result.stdout == "Erased 2 events and 1 dead letter of this user_id in 'Acme'.\n"
    assert result.stderr == "erased 2 of 2 events\nsearched 3 of 3 dead letters\n"  # plain progress when piped

    assert events_of("Acme") == [("a3", "u2")]
    assert events_of("Beta") == [("b1", "u1")]
    kept = dead_letters_of("Acme")
    assert len(kept) == 2 and {"bad-u2"} == {letter.get("event_id") for letter in kept} - {None}
    [preview] = [letter for letter in kept if "preview" in letter]  # unreadable: left alone
    assert "u1" in preview["preview"]

    engine = make_engine(database_url)
    with engine.connect() as connection:
        [(actor, detail)] = connection.execute(
            select(AuditEntry.actor, AuditEntry.detail).where(AuditEntry.action == "events.erased")
        )
    engine.dispose()
    assert (actor, detail) == (OWNER, {"by": "user_id", "events": 2, "dead_letters": 1})
    assert "u1" not in json.dumps(detail)

    send(acme, an_event("later", user_id="u1"))  # sent after the erasure: stored as usual
    assert ("later", "u1") in events_of("Acme")


def test_json_and_a_dry_run_that_deletes_nothing(acme: str) -> None:
    before = (events_of("Acme"), dead_letters_of("Acme"))
    dry = ok(*ERASE, "--dry-run")  # asks nothing: it changes nothing
    assert dry.stdout == "Would erase 2 events and 1 dead letter of this user_id in 'Acme'.\n"
    assert json.loads(ok(*ERASE, "--dry-run", "--json").stdout) == {
        "org": "Acme",
        "by": "user_id",
        "events": 2,
        "dead_letters": 1,
        "dry_run": True,
    }
    assert (events_of("Acme"), dead_letters_of("Acme")) == before

    anonymous = ("events", "erase", "--org", "Acme", "--anonymous-id", "u1", "--as", OWNER, "--yes", "--json")
    assert json.loads(ok(*anonymous).stdout)["events"] == 0  # u1 is a user_id here, not an anonymous_id


def test_refusals_delete_nothing(acme: str) -> None:
    before = (events_of("Acme"), dead_letters_of("Acme"))
    for actor in ("member@acme.io", "owner@beta.io"):
        refused = run("events", "erase", "--org", "Acme", "--user-id", "u1", "--as", actor, "--yes")
        assert refused.exit_code == 1 and refused.output.count("\n") == 1
        assert f"{actor} is not an owner of 'Acme'" in refused.output
    unasked = run(*ERASE)  # standard input is not a terminal, and no --yes
    assert unasked.exit_code == 1 and "pass --yes" in unasked.output and unasked.output.count("\n") == 1
    both = run("events", "erase", "--org", "Acme", "--user-id", "u1", "--anonymous-id", "a", "--as", OWNER)
    assert both.exit_code == 2 and "exactly one of --user-id and --anonymous-id" in both.output
    assert run("events", "erase", "--org", "Acme", "--as", OWNER).exit_code == 2
    assert (events_of("Acme"), dead_letters_of("Acme")) == before


def test_on_a_terminal_it_asks_and_shows_a_bar(acme: str) -> None:
    declined, shown = in_a_terminal(*ERASE, answer="n")
    assert declined == 1, shown
    assert "Erase 2 events of this user_id in 'Acme', and its dead letters? [y/N]" in shown
    assert len(events_of("Acme")) == 3

    accepted, shown = in_a_terminal(*ERASE, answer="y")
    assert accepted == 0, shown
    assert "Erased  [####" in shown and "Searched  [####" in shown and "erased 2 of 2" not in shown
    assert "Erased 2 events and 1 dead letter of this user_id in 'Acme'." in shown
    assert events_of("Acme") == [("a3", "u2")]
