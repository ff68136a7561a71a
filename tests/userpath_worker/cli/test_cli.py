"""The ``userpath`` command end to end, on a fresh SQLite file and on real PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from config.settings import get_settings
from tests.common.cli import ok, run
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database, table_dump
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker import runtime, schema
from userpath_worker.db import make_engine, utcnow
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.keys import tokens


@pytest.fixture
def acme(database_url: str) -> str:
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.io")
    return "Acme"


def test_create_prints_the_key_once_with_a_warning(acme: str) -> None:
    result = ok("keys", "create", "--org", acme, "--name", "App X Production Server", "--as", "owner@acme.io")
    key = result.stdout.strip()
    assert tokens.KEY_PATTERN.fullmatch(key)
    assert "will not be shown again" in result.stderr

    listing = ok("keys", "list", "--org", acme).stdout
    assert "App X Production Server" in listing and tokens.display_form(key) in listing
    assert key not in listing


def test_json_output_for_scripts(acme: str) -> None:
    created = json.loads(
        ok(
            "keys",
            "create",
            "--org",
            acme,
            "--name",
            "Jobs",
            "--as",
            "owner@acme.io",
            "--env",
            "test",
            "--expires-in",
            "90d",
            "--json",
        ).stdout
    )
    assert created["key"].startswith("up_test_") and created["environment"] == "test"
    assert created["expires_at"] is not None

    rolled = json.loads(
        ok("keys", "roll", str(created["id"]), "--as", "owner@acme.io", "--grace", "1h", "--json").stdout
    )
    assert rolled["replaces"] == created["id"] and rolled["key"] != created["key"]

    listed = json.loads(ok("keys", "list", "--org", acme, "--json").stdout)
    assert [(k["id"], k["name"], k["status"]) for k in listed] == [
        (created["id"], "Jobs", "expiring"),
        (rolled["id"], "Jobs", "active"),
    ]
    assert "key" not in listed[0]

    ok("keys", "delete", str(rolled["id"]), "--as", "owner@acme.io")
    statuses = [k["status"] for k in json.loads(ok("keys", "list", "--org", acme, "--json").stdout)]
    assert statuses == ["expiring", "deleted"]


def test_members_who_are_not_owners_are_refused_with_one_line(acme: str) -> None:
    ok("members", "add", "--org", acme, "admin@acme.io", "--role", "admin")
    result = run("keys", "create", "--org", acme, "--name", "Server", "--as", "admin@acme.io")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: admin@acme.io is not an owner of 'Acme'; only owners can create, roll or delete keys"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "list", "--org", "Nope"], "organization 'Nope' not found"),
        (["keys", "roll", "424242", "--as", "owner@acme.io"], "API key 424242 not found"),
        (["orgs", "create", "Acme", "--owner", "x@acme.io"], "already exists"),
        (["members", "add", "--org", "Acme", "not-an-email", "--role", "member"], "not an e-mail address"),
    ],
)
def test_user_errors_exit_1_with_one_line_and_no_traceback(acme: str, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--org", "Acme"],
        ["keys", "create", "--org", "Acme", "--name", "S", "--as", "o@a.io", "--env", "prod"],
        ["keys", "create", "--org", "Acme", "--name", "S", "--as", "o@a.io", "--expires-in", "soon"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(acme: str, args: list[str]) -> None:
    assert run(*args).exit_code == 2


def test_a_bad_setting_stops_every_command_with_one_line(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("USERPATH_AUTH_CACHE_SECONDS", "60")
    result = run("keys", "list", "--org", "Acme")
    assert result.exit_code == 1
    assert result.output.startswith("Error: invalid setting USERPATH_AUTH_CACHE_SECONDS:")
    assert len(result.output.strip().splitlines()) == 1


def test_an_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 (discard) on loopback: nothing listens there, so the connection is refused at once.
    monkeypatch.setenv("USERPATH_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nothing")
    result = run("keys", "list", "--org", "Acme")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot use the database in USERPATH_DATABASE_URL")
    assert "Traceback" not in result.output


def test_a_postgres_schema_behind_the_code_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_empty")
    monkeypatch.setenv("USERPATH_DATABASE_URL", url)
    result = run("keys", "list", "--org", "Acme")
    assert result.exit_code == 1
    assert "run `userpath db upgrade` first" in result.output
    ok("db", "upgrade")
    assert run("keys", "list", "--org", "Acme").output.startswith("Error: organization 'Acme' not found")


def test_against_postgresql_keys_are_not_made_without_the_pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Digests made without a pepper could never be peppered later without invalidating every key."""
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_no_pepper")
    monkeypatch.setenv("USERPATH_DATABASE_URL", url)
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.example")
    monkeypatch.delenv("USERPATH_KEY_PEPPER")
    get_settings.cache_clear()
    result = run("keys", "create", "--org", "Acme", "--name", "App X Production Server", "--as", "owner@acme.example")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: USERPATH_KEY_PEPPER is not set; against PostgreSQL set it to a long random value, the same for every "
        'worker, CLI and web process (python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
    ]


def test_a_command_checks_the_schema_once_however_many_transactions_it_opens(
    acme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(schema, "prepare", counted("prepare", schema.prepare))
    monkeypatch.setattr(runtime, "session_factory", counted("transactions", runtime.session_factory))
    ok("rotation", "run")  # a transaction a batch, then one for the reminders
    assert calls["transactions"] > 1 and calls["prepare"] == 1
    ok("keys", "list", "--org", acme)  # the next command checks again
    assert calls["prepare"] == 2
    before = dict(calls)
    ok("worker", "--help")  # a command that needs no database never touches it
    assert calls == before


def test_no_key_reaches_the_tables(acme: str, database_url: str) -> None:
    key = ok("keys", "create", "--org", acme, "--name", "Server", "--as", "owner@acme.io").stdout.strip()
    engine = make_engine(database_url)
    with engine.connect() as connection:
        dump = table_dump(connection, engine)
    engine.dispose()
    assert "key.created" in dump and key not in dump


def test_deadletter_replay_and_purge(acme: str, database_url: str) -> None:
    key = json.loads(ok("keys", "create", "--org", acme, "--name", "Server", "--as", "owner@acme.io", "--json").stdout)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        # A dead letter whose event is valid under today's contract, as after a contract fix.
        connection.execute(
            insert(DeadLetter),
            [
                {
                    "org_id": 1,
                    "api_key_id": key["id"],
                    "reason": "invalid_event",
                    "detail": "old contract",
                    "queue": EVENTS_QUEUE,
                    "task": TRACK_TASK,
                    "received_at": utcnow(),
                    "payload": {"event": "Signed Up", "user_id": "u1", "timestamp": "2026-03-01T11:59:00+00:00"},
                }
            ],
        )
    engine.dispose()
    refused = run("deadletter", "replay", "--org", acme, "--as", "nobody@acme.io")
    assert refused.exit_code == 1 and "only owners" in refused.output
    replayed = ok("deadletter", "replay", "--org", acme, "--as", "owner@acme.io", "--since", "1h")
    assert "Examined 1 dead letter: 1 now stored, 0 still failing." in replayed.stdout
    assert replayed.stderr == "replayed 1 of 1 dead letter\n"  # progress, as plain lines when not on a terminal
    assert "Signed Up" in ok("events", "list", "--org", acme).stdout
    again = ok("deadletter", "replay", "--org", acme, "--as", "owner@acme.io", "--json")
    assert json.loads(again.stdout) == {"examined": 0, "stored": 0, "still_failing": 0}
    assert "Deleted 0 dead letters" in ok("deadletter", "purge", "--older-than", "30d", "--yes").stdout
    assert "Deleted 1 dead letter " in ok("deadletter", "purge", "--older-than", "0", "--yes").stdout


def test_deadletter_list_shows_every_organization_and_the_unattributed(acme: str, database_url: str) -> None:
    ok("orgs", "create", "Beta", "--owner", "owner@beta.io")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(DeadLetter),
            [
                {"org_id": org_id, "reason": reason, "detail": detail, "received_at": utcnow(), "payload": None}
                for org_id, reason, detail in (
                    (1, "invalid_event", "acme's"),
                    (2, "expired_key", "beta's"),
                    (None, "unknown_key", "nobody's"),
                )
            ],
        )
    engine.dispose()

    every = ok("deadletter", "list").stdout
    assert "ORG" in every.splitlines()[0]
    assert all(detail in every for detail in ("acme's", "beta's", "nobody's"))
    assert any("nobody's" in line and " - " in line for line in every.splitlines())
    only_acme = ok("deadletter", "list", "--org", acme).stdout
    assert "acme's" in only_acme and "beta's" not in only_acme and "nobody's" not in only_acme
    unattributed = json.loads(ok("deadletter", "list", "--unattributed", "--json").stdout)
    assert [(d["detail"], d["org"], d["org_id"]) for d in unattributed] == [("nobody's", None, None)]
    listed = json.loads(ok("deadletter", "list", "--reason", "expired_key", "--json").stdout)
    assert [(d["detail"], d["org"]) for d in listed] == [("beta's", "Beta")]
    assert run("deadletter", "list", "--org", acme, "--unattributed").exit_code == 2


class TestOnlyOwnersManageKeysThroughTheCli:
    """The test above covers an admin; members and people outside the organization are refused too."""

    @pytest.fixture
    def acme_key_id(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("USERPATH_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
        for arguments in (
            ["db", "upgrade"],
            ["orgs", "create", "Acme", "--owner", "owner@acme.io"],
            ["members", "add", "--org", "Acme", "member@acme.io", "--role", "member"],
        ):
            assert run(*arguments).exit_code == 0
        created = run("keys", "create", "--org", "Acme", "--name", "Server", "--as", "owner@acme.io", "--json")
        return str(json.loads(created.stdout)["id"])

    @pytest.mark.parametrize("actor", ["member@acme.io", "stranger@elsewhere.io"])
    def test_members_and_strangers_cannot_create_roll_or_delete(self, acme_key_id: str, actor: str) -> None:
        for arguments in (
            ["keys", "create", "--org", "Acme", "--name", "Mine", "--as", actor],
            ["keys", "roll", acme_key_id, "--as", actor],
            ["keys", "delete", acme_key_id, "--as", actor],
        ):
            result = run(*arguments)
            assert result.exit_code == 1, result.output
            assert "only owners can create, roll or delete keys" in result.output
            assert not tokens.KEY_PATTERN.search(result.output)
        listed = json.loads(run("keys", "list", "--org", "Acme", "--json").stdout)
        assert [(key["name"], key["status"]) for key in listed] == [("Server", "active")]
