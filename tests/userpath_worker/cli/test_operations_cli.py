"""Saying what is being used: the database and broker in ``userpath status``, unknown ``USERPATH_*``
variables, a new embedded database, and a database URL of no known form."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.common.cli import ok, run
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database
from tests.common.workers import rabbitmq_vhost

USERPATH = str(Path(sys.executable).with_name("userpath"))


def userpath(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a process of its own, with only ``settings`` of ours set."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}
    return subprocess.run(
        [USERPATH, *args], cwd=cwd, env={**inherited, **settings}, capture_output=True, text=True, timeout=120
    )


def test_status_starts_with_the_database_and_broker_in_use_without_their_passwords(
    cli_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL's trust authentication accepts any password: this one only has to stay unseen.
    database_url = make_url(cli_postgres_url).set(password="database-password")
    broker_url = rabbitmq_vhost(f"{TEST_DATABASE_PREFIX}_status")
    monkeypatch.setenv("USERPATH_DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("USERPATH_BROKER_URL", broker_url)
    masked_database = database_url.render_as_string(hide_password=True)
    masked_broker = f"amqp://guest:**@127.0.0.1:5672/{TEST_DATABASE_PREFIX}_status"

    shown = ok("status").stdout
    assert shown.splitlines()[:2] == [
        f"Database:             {masked_database}",
        f"Broker:               {masked_broker}",
    ]
    # A fresh database: nothing stored yet, said in words; a time would carry "UTC", as tables say.
    assert "Last event stored:    never" in shown and "Last rotation pass:   never" in shown
    ok("rotation", "run")
    assert re.search(r"^Last rotation pass:   \d{4}-\d\d-\d\d \d\d:\d\d UTC \(flagged 0", ok("status").stdout, re.M)
    found = json.loads(ok("status", "--json").stdout)
    assert (found["database"], found["broker"]) == (masked_database, masked_broker)
    assert "database-password" not in shown + json.dumps(found) and "guest:guest" not in shown + json.dumps(found)


def test_an_unknown_userpath_variable_is_one_warning_naming_the_closest_setting(tmp_path: Path) -> None:
    result = userpath(
        "db",
        "upgrade",
        cwd=tmp_path,
        USERPATH_DATABSE_URL="postgresql://postgres@127.0.0.1/userpath",
        USERPATH_TEST_ANYTHING="the test suite's own",  # its prefix is the tests': no warning
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "userpath: warning: USERPATH_DATABSE_URL is not a setting and is ignored; did you mean USERPATH_DATABASE_URL?"
    )
    assert "USERPATH_TEST_ANYTHING" not in result.stderr


def test_userpath_worker_warns_once_though_celery_reads_the_settings_again(tmp_path: Path) -> None:
    # The CLI execs Celery, which imports the settings anew; on a schema-less PostgreSQL database it
    # then stops at start, so the test needs no worker to stop.
    empty = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_no_schema")
    result = userpath(
        "worker",
        cwd=tmp_path,
        USERPATH_DATABASE_URL=empty,
        USERPATH_BROKER_URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        USERPATH_METRICS_PORT="0",
        USERPATH_LOGLEVEL="DEBUG",
    )
    assert "schema is at revision none" in result.stdout + result.stderr
    output = (result.stdout + result.stderr).splitlines()
    warnings = [line for line in output if "is not a setting" in line]
    assert warnings == [
        "userpath: warning: USERPATH_LOGLEVEL is not a setting and is ignored; did you mean USERPATH_LOG_LEVEL?"
    ]


def test_a_command_about_to_create_a_new_embedded_database_says_so_once(tmp_path: Path) -> None:
    database = tmp_path / "fresh.db"
    url = f"sqlite:///{database}"
    first = userpath("keys", "stale", cwd=tmp_path, USERPATH_DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == [
        f"userpath: creating a new embedded database {database} (USERPATH_DATABASE_URL names the database to use)"
    ]
    again = userpath("keys", "stale", cwd=tmp_path, USERPATH_DATABASE_URL=url)
    assert again.returncode == 0 and again.stderr == ""
    # db upgrade makes the schema deliberately, and still says where.
    upgraded = userpath("db", "upgrade", cwd=tmp_path)
    assert upgraded.stderr.splitlines() == [
        f"userpath: creating a new embedded database {tmp_path / 'userpath.db'} "
        "(USERPATH_DATABASE_URL names the database to use)"
    ]


def test_a_database_url_of_no_known_form_names_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_DATABASE_URL", "nonsense")
    result = run("keys", "stale")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: invalid setting USERPATH_DATABASE_URL: must be sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE"
    ]
