"""``userpath deadletter purge``: retention that asks first, on a fresh SQLite file and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
from sqlalchemy import insert, select

from tests.common.cli import ok, run
from tests.common.terminal import in_a_terminal
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker.db import make_engine, utcnow
from userpath_worker.deadletter.models import DeadLetter


@pytest.fixture
def letters(database_url: str) -> None:
    """Old and new dead letters of Acme (org 1), of Beta (org 2) and without an organization."""
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.io")
    ok("orgs", "create", "Beta", "--owner", "owner@beta.io")
    old, new = utcnow() - dt.timedelta(days=40), utcnow()
    rows = [
        (1, "invalid_event", old),
        (1, "invalid_event", old),
        (1, "deleted_key", old),
        (1, "invalid_event", new),
        (2, "invalid_event", old),
        (None, "unknown_key", old),
    ]
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(DeadLetter),
            [
                {
                    "org_id": org_id,
                    "reason": reason,
                    "detail": "-",
                    "queue": EVENTS_QUEUE,
                    "task": TRACK_TASK,
                    "received_at": received_at,
                    "payload": {},
                }
                for org_id, reason, received_at in rows
            ],
        )
    engine.dispose()


def remaining(database_url: str) -> Counter[tuple[int | None, str]]:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        found = Counter(tuple(row) for row in connection.execute(select(DeadLetter.org_id, DeadLetter.reason)))
    engine.dispose()
    return found


ALL = Counter({(1, "invalid_event"): 3, (1, "deleted_key"): 1, (2, "invalid_event"): 1, (None, "unknown_key"): 1})


def test_a_dry_run_says_how_many_and_deletes_nothing(letters: None, database_url: str) -> None:
    result = ok("deadletter", "purge", "--older-than", "30d", "--dry-run")
    assert result.stdout == "Would delete 5 dead letters received more than 30d ago.\n"
    assert remaining(database_url) == ALL


def test_without_a_terminal_it_refuses_unless_yes(letters: None, database_url: str) -> None:
    refused = run("deadletter", "purge", "--older-than", "30d")  # standard input is not a terminal
    assert refused.exit_code == 1
    assert refused.output == (
        "Error: Delete 5 dead letters received more than 30d ago? "
        "Standard input is not a terminal to answer on: pass --yes to go ahead.\n"
    )
    assert remaining(database_url) == ALL

    purged = ok("deadletter", "purge", "--older-than", "30d", "--yes")
    assert purged.stdout == "Deleted 5 dead letters received more than 30d ago.\n"
    assert purged.stderr == "deleted 5 of 5 dead letters\n"  # progress, as plain lines when not on a terminal
    assert remaining(database_url) == Counter({(1, "invalid_event"): 1})


def test_org_and_reason_narrow_what_is_deleted(letters: None, database_url: str) -> None:
    result = ok("deadletter", "purge", "--older-than", "30d", "--org", "Acme", "--reason", "invalid_event", "--yes")
    assert result.stdout == "Deleted 2 dead letters of 'Acme' (invalid_event) received more than 30d ago.\n"
    assert remaining(database_url) == ALL - Counter({(1, "invalid_event"): 2})

    as_json = json.loads(ok("deadletter", "purge", "--older-than", "30d", "--org", "Beta", "--json", "--yes").stdout)
    assert as_json == {"matched": 1, "deleted": 1, "dry_run": False}
    dry = json.loads(ok("deadletter", "purge", "--older-than", "0", "--dry-run", "--json").stdout)
    assert dry == {"matched": 3, "deleted": 0, "dry_run": True}

    unknown = run("deadletter", "purge", "--older-than", "30d", "--org", "Nope", "--yes")
    assert unknown.exit_code == 1 and unknown.output.count("\n") == 1


def test_nothing_to_delete_asks_nothing(letters: None) -> None:
    assert ok("deadletter", "purge", "--older-than", "90d").stdout == (
        "Deleted 0 dead letters received more than 90d ago.\n"
    )


def test_on_a_terminal_it_asks_and_shows_a_bar(letters: None, database_url: str) -> None:
    declined, shown = in_a_terminal("deadletter", "purge", "--older-than", "30d", answer="n")
    assert declined == 1 and "Delete 5 dead letters received more than 30d ago? [y/N]" in shown
    assert remaining(database_url) == ALL

    accepted, shown = in_a_terminal("deadletter", "purge", "--older-than", "30d", answer="y")
    assert accepted == 0, shown
    assert "Deleted  [####" in shown and "100%" in shown and "deleted 5 of 5" not in shown
    assert "Deleted 5 dead letters received more than 30d ago." in shown
    assert remaining(database_url) == Counter({(1, "invalid_event"): 1})
