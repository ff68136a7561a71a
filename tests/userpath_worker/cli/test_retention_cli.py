"""``userpath orgs set-retention`` and ``userpath events apply-retention``, on a fresh SQLite file
and on PostgreSQL (where the expired day partitions are dropped)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.common.cli import ok, run
from tests.common.factories import event_row
from userpath_worker.db import make_engine, utcnow
from userpath_worker.events import partitions
from userpath_worker.events.models import Event
from userpath_worker.events.storage import insert_events


@pytest.fixture
def acme(database_url: str) -> None:
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.io")


def test_an_organization_gets_its_own_retention_and_goes_back_to_the_default(acme: None) -> None:
    assert ok("orgs", "set-retention", "--org", "Acme", "--days", "30").output == "'Acme' keeps its events 30 days.\n"
    shown = json.loads(ok("orgs", "set-retention", "--org", "Acme", "--default", "--json").output)
    assert shown == {"id": 1, "name": "Acme", "days": 395, "default": True}


@pytest.mark.parametrize(
    ("arguments", "code", "says"),
    [
        ((), 2, "give either --days N or --default"),
        (("--days", "3", "--default"), 2, "give either --days N or --default"),
        (("--days", "0"), 2, "0 is not in the range"),
        (("--days", "x"), 2, "'x' is not a valid integer"),
    ],
)
def test_set_retention_refuses_what_it_cannot_apply(
    acme: None, arguments: tuple[str, ...], code: int, says: str
) -> None:
    result = run("orgs", "set-retention", "--org", "Acme", *arguments)
    assert result.exit_code == code and says in result.output


def test_an_unknown_organization_is_one_line_and_exit_1(acme: None) -> None:
    result = run("orgs", "set-retention", "--org", "acme inc", "--days", "3")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_apply_retention_deletes_what_is_older_than_each_organizations_retention(acme: None, database_url: str) -> None:
    ok("orgs", "create", "Beta", "--owner", "owner@beta.io")
    ok("orgs", "set-retention", "--org", "Acme", "--days", "10")
    engine = make_engine(database_url)
    old, new = utcnow() - dt.timedelta(days=20), utcnow()
    with Session(engine) as session, session.begin():
        partitions.ensure_days(session.connection(), {old.date()})
        insert_events(session, [event_row(1, "a-old", old), event_row(1, "a-new", new), event_row(2, "b-old", old)])

    dry = json.loads(ok("events", "apply-retention", "--dry-run", "--json").output)
    assert (dry["dry_run"], dry["events_deleted"], dry["events_deleted_by_org"]) == (True, 1, {"1": 1})
    assert ok("events", "apply-retention").output.splitlines()[-1] == (
        "Deleted 1 events of 1 organizations with a shorter retention than the longest."
    )
    with engine.connect() as connection:
        assert set(connection.scalars(select(Event.event_id))) == {"a-new", "b-old"}
    engine.dispose()


def test_db_upgrade_prepare_only_stops_before_the_online_move(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("USERPATH_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert json.loads(ok("db", "upgrade", "--prepare-only", "--json").stdout) == {"revision": "0012"}
    assert json.loads(ok("db", "upgrade", "--json").stdout) == {"revision": "0019"}
    assert json.loads(ok("db", "upgrade", "--prepare-only", "--json").stdout) == {"revision": "0019"}


def test_a_drop_that_waits_on_a_long_query_gives_up_in_one_line_and_works_when_run_again(
    acme: None, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite drops no partitions")
    engine = make_engine(database_url)
    long_ago = utcnow() - dt.timedelta(days=500)
    with engine.begin() as connection:
        partitions.ensure_days(connection, {long_ago.date()})
    with engine.connect() as reader:
        reader.execute(select(Event.id).limit(1)).all()  # holds events until its transaction ends
        result = run("events", "apply-retention")
        reader.rollback()
    assert result.exit_code == 1 and "lock timeout" in result.output and "run it again" in result.output
    assert f"events_p{long_ago.date():%Y%m%d}" in ok("events", "apply-retention").output
    engine.dispose()
