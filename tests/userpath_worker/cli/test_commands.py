"""The commands a person expects (issue 14, items 5 and 8), through the real ``userpath`` command
on SQLite and PostgreSQL: --version and -h, orgs list, keys show, audit list, events list's
filters and pages, --json on every command that changes something, usage mistakes exiting 2,
--since, an organization's closest name, what rolling says, and times labelled UTC."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
from typing import Any

import click
import pytest
from sqlalchemy import insert

from tests.common.cli import ok, run
from userpath_worker.cli import cli
from userpath_worker.cli.common import DURATION
from userpath_worker.cli.keys import keys_roll
from userpath_worker.db import make_engine, utcnow
from userpath_worker.events.models import Event
from userpath_worker.keys.services import DEFAULT_ROLL_GRACE

OWNER = "owner@acme.io"


@pytest.fixture
def acme(database_url: str) -> str:
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", OWNER)
    return "Acme"


def create_key(org: str, name: str = "Server") -> dict[str, Any]:
    return json.loads(ok("keys", "create", "--org", org, "--name", name, "--as", OWNER, "--json").stdout)


def test_version_comes_from_the_installed_distribution() -> None:
    assert ok("--version").stdout.strip() == f"userpath, version {importlib.metadata.version('userpath-worker')}"


def every_command(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[list[str]]:
    found = [list(path)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
        else:
            found.append([*path, name])
    return found


@pytest.mark.parametrize("command", every_command(), ids=" ".join)
def test_dash_h_is_help_on_every_command(command: list[str]) -> None:
    short, long = ok(*command, "-h").stdout, ok(*command, "--help").stdout
    assert short == long and short.startswith("Usage: userpath") and "-h, --help" in short


# Commands that run until stopped or only answer with an exit status, and the dead-letter commands
# whose options issue 14 item 6 changes.
WITHOUT_JSON = [["worker"], ["beat"], ["web"], ["edge"], ["health"], ["demo"]]


def test_every_command_has_json_but_the_servers() -> None:
    missing = []  # commands without --json, apart from those above
    for path in every_command():
        command = cli
        for name in path:
            command = command.commands[name]
        has_json = any(param.name == "as_json" for param in command.params)
        if not isinstance(command, click.Group) and not has_json and path not in WITHOUT_JSON:
            missing.append(path)
    assert missing == []


def test_durations_are_shown_as_duration_with_the_readme_s_default() -> None:
    help_text = ok("keys", "roll", "-h").stdout
    assert "--grace DURATION" in help_text and "[default: 24h]" in help_text
    grace = next(param for param in keys_roll.params if param.name == "grace")
    assert DURATION.convert(grace.default, grace, None) == DEFAULT_ROLL_GRACE
    assert "--expires-in DURATION" in ok("keys", "create", "-h").stdout
    assert "resolution of 60 seconds" in ok("keys", "list", "-h").stdout


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--org", "Acme", "--name", "S", "--as", OWNER, "--expires-in", "soon"],
        ["keys", "roll", "1", "--as", OWNER, "--grace", "a day"],
        ["keys", "create", "--org", "Acme", "--name", "S", "--as", OWNER, "--expires-in", "0"],  # not positive
        ["keys", "roll", "1", "--as", OWNER, "--grace", "8d"],  # beyond 7d
        ["events", "list", "--org", "Acme", "--before-id", "abc"],
        ["events", "list", "--org", "Acme", "--since", "yesterday"],
        ["events", "list", "--org", "Acme", "--source", "mobile"],
        ["deadletter", "replay", "--org", "Acme", "--as", OWNER, "--since", "2026-13-45"],
        ["members", "add", "new@acme.io", "--role", "member"],  # no organization
        ["members", "add", "--org", "Acme", "Acme", "new@acme.io", "--role", "member"],  # two of them
        ["members", "set-role", "--org", "Acme", OWNER, "--role", "boss", "--as", OWNER],
        ["audit", "list"],
    ],
)
def test_usage_mistakes_exit_2_with_the_option_named(acme: str, args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().splitlines()[-1].startswith("Error: ")
    assert "integer range" not in result.output  # click's own words for a number, where an id is meant


def test_orgs_list_and_orgs_create_json(database_url: str) -> None:
    ok("db", "upgrade")
    created = json.loads(ok("orgs", "create", "Beta", "--owner", "Boss@Beta.io", "--json").stdout)
    assert (created["name"], created["owner"]) == ("Beta", "boss@beta.io")
    assert created["url"].startswith("http://127.0.0.1:8000/invitations/")
    ok("orgs", "create", "Acme", "--owner", OWNER)
    ok("members", "add", "--org", "Acme", "admin@acme.io", "--role", "admin")
    listed = json.loads(ok("orgs", "list", "--json").stdout)
    assert [(org["name"], org["members"]) for org in listed] == [("Acme", 2), ("Beta", 1)]
    assert listed[1]["id"] == created["id"]
    table = ok("orgs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "MEMBERS", "CREATED", "(UTC)"]
    assert table[1].split()[1:3] == ["Acme", "2"]


@pytest.mark.parametrize(
    ("typed", "suggested"), [("acme", "Acme"), ("Acne", "Acme"), ("Acme Inc", "Acme"), ("Zebra", None)]
)
def test_an_organization_not_found_suggests_the_closest_name(acme: str, typed: str, suggested: str | None) -> None:
    result = run("keys", "list", "--org", typed)
    assert result.exit_code == 1
    hint = f"did you mean '{suggested}'?" if suggested else "create it with `userpath orgs create`"
    assert result.output.strip() == f"Error: organization '{typed}' not found; {hint}"


def test_keys_show_one_key_without_its_secret(acme: str) -> None:
    key = create_key(acme)
    shown = ok("keys", "show", str(key["id"])).stdout
    assert key["key"] not in shown
    lines = dict(line.split(":", 1) for line in shown.splitlines())
    assert lines["ORG"].strip() == "Acme" and lines["KEY"].strip() == key["display"]
    assert lines["STATUS"].strip() == "active" and lines["LAST USED (UTC)"].strip() == "-"
    document = json.loads(ok("keys", "show", str(key["id"]), "--json").stdout)
    assert document["org"] == "Acme" and document["display"] == key["display"] and "key" not in document
    missing = run("keys", "show", "424242")
    assert missing.exit_code == 1 and "API key 424242 not found" in missing.output


def test_rolling_says_when_the_old_key_stops_and_names_its_replacement(acme: str) -> None:
    first = create_key(acme, "Now")
    now = ok("keys", "roll", str(first["id"]), "--as", OWNER, "--grace", "0")
    assert f"Key {first['id']} stopped working now." in now.stderr
    statuses = {key["id"]: key["status"] for key in json.loads(ok("keys", "list", "--org", acme, "--json").stdout)}
    assert statuses[first["id"]] == "expired"

    second = create_key(acme, "Later")
    rolled = json.loads(ok("keys", "roll", str(second["id"]), "--as", OWNER, "--json").stdout)
    expires = dt.datetime.fromisoformat(rolled["old_key_expires_at"])
    assert abs(expires - (utcnow() + DEFAULT_ROLL_GRACE)) < dt.timedelta(minutes=1)  # the default grace, 24h
    again = run("keys", "roll", str(second["id"]), "--as", OWNER)
    assert again.exit_code == 1
    assert again.output.strip() == (
        f"Error: API key {second['id']} is expiring and cannot be rolled: key {rolled['id']} already replaced it; "
        f"roll key {rolled['id']} instead"
    )


def test_keys_delete_json(acme: str) -> None:
    key = create_key(acme)
    deleted = json.loads(ok("keys", "delete", str(key["id"]), "--as", OWNER, "--json").stdout)
    assert (deleted["id"], deleted["status"]) == (key["id"], "deleted") and deleted["deleted_at"]
    assert key["key"] not in json.dumps(deleted)


def test_audit_list_newest_first_with_a_limit(acme: str) -> None:
    key = create_key(acme)
    ok("keys", "roll", str(key["id"]), "--as", OWNER, "--grace", "1h")
    entries = json.loads(ok("audit", "list", "--org", acme, "--json").stdout)
    assert [entry["action"] for entry in entries] == ["key.rolled", "key.created", "member.invited"]
    assert entries[0]["actor"] == OWNER and entries[0]["api_key_id"] == key["id"]
    assert [
        entry["action"] for entry in json.loads(ok("audit", "list", "--org", acme, "--limit", "1", "--json").stdout)
    ] == ["key.rolled"]
    table = ok("audit", "list", "--org", acme).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "TIME", "(UTC)"] and "key.rolled" in table[1]
    assert key["key"] not in "\n".join(table)


def store_events(database_url: str, key_id: int, rows: list[tuple[str, str | None, str, dt.datetime]]) -> None:
    """Events stored as the worker stores them: (name, user_id, source, occurred_at), in this order."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(Event),
            [
                {
                    "org_id": 1,
                    "api_key_id": key_id,
                    "environment": "live",
                    "source": source,
                    "event_id": f"event-{number}",
                    "name": name,
                    "user_id": user_id,
                    "anonymous_id": None if user_id else "anonymous",
                    "properties": {},
                    "context": None,
                    "timestamp": occurred,
                    "sent_at": None,
                    "received_at": occurred,
                    "occurred_at": occurred,
                }
                for number, (name, user_id, source, occurred) in enumerate(rows)
            ],
        )
    engine.dispose()


def listed(*args: str) -> list[str]:
    return [event["event_id"] for event in json.loads(ok("events", "list", "--org", "Acme", *args, "--json").stdout)]


def test_events_list_filters_and_pages(acme: str, database_url: str) -> None:
    now = utcnow()
    store_events(
        database_url,
        create_key(acme)["id"],
        [
            ("Signed Up", "u1", "server", now - dt.timedelta(days=3)),
            ("Invoices Sent", "billing", "job", now - dt.timedelta(hours=2)),
            ("Signed Up", "u2", "server", now - dt.timedelta(minutes=5)),
            ("charge.succeeded", None, "webhook", now - dt.timedelta(minutes=1)),
        ],
    )
    assert listed() == ["event-3", "event-2", "event-1", "event-0"]
    assert listed("--name", "Signed Up") == ["event-2", "event-0"]
    assert listed("--user-id", "billing") == ["event-1"]
    assert listed("--source", "webhook") == ["event-3"]
    assert listed("--since", "1h") == ["event-3", "event-2"]
    assert listed("--name", "Signed Up", "--since", "7d") == ["event-2", "event-0"]

    first = ok("events", "list", "--org", acme, "--limit", "2")
    assert first.stdout.splitlines()[0].split()[:3] == ["ID", "OCCURRED", "(UTC)"]
    ids = [line.split()[0] for line in first.stdout.splitlines()[1:]]
    assert f"Older events: add --before-id {ids[-1]}" in first.stderr
    assert listed("--before-id", ids[-1]) == ["event-1", "event-0"]
    assert listed("--before-id", ids[-1], "--limit", "1") == ["event-1"]
    assert "--before-id" not in ok("events", "list", "--org", acme, "--before-id", ids[-1]).stderr  # the last page


def test_since_reads_an_iso_time_without_an_offset_as_utc_and_says_so(acme: str, database_url: str) -> None:
    store_events(
        database_url,
        create_key(acme)["id"],
        [
            ("Early", "u1", "server", dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)),
            ("Late", "u1", "server", dt.datetime(2026, 3, 1, 13, 0, tzinfo=dt.UTC)),
        ],
    )
    naive = ok("events", "list", "--org", acme, "--since", "2026-03-01T12:00", "--json")
    assert [event["name"] for event in json.loads(naive.stdout)] == ["Late"]
    assert naive.stderr.strip() == "Note: --since 2026-03-01T12:00 has no UTC offset; read as UTC."
    # 12:00 at +02:00 is 10:00 UTC: both events; an offset given is no note.
    offset = ok("events", "list", "--org", acme, "--since", "2026-03-01T12:00+02:00", "--json")
    assert [event["name"] for event in json.loads(offset.stdout)] == ["Late", "Early"] and offset.stderr == ""


def test_every_command_that_changes_something_prints_json(acme: str) -> None:
    """The changes without a test of their own above; each document is JSON with what changed."""
    assert json.loads(ok("db", "upgrade", "--json").stdout)["revision"]
    assert json.loads(ok("rotation", "run", "--json").stdout) == {
        "flagged": [],
        "cleared": [],
        "reminded": [],
        "expired": [],
        "reminders": [],
    }
    added = json.loads(ok("members", "add", "--org", acme, "New@acme.io", "--role", "member", "--json").stdout)
    assert (added["org"], added["email"], added["role"]) == ("Acme", "new@acme.io", "member")
