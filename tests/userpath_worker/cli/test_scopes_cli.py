"""``userpath keys create --scope`` (issue 21, item 6): chosen on the command line, listed by
``keys show`` and ``keys list`` (and their ``--json``), kept by ``keys roll``, audit-logged; a scope
that is not one is a usage mistake. On a fresh SQLite file and on real PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.common.cli import ok, run
from userpath_worker.keys.models import ApiKey


@pytest.fixture
def acme(database_url: str) -> str:
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.io")
    ok("members", "add", "--org", "Acme", "member@acme.io", "--role", "member")
    return "Acme"


def create(*options: str) -> dict:
    arguments = ["keys", "create", "--org", "Acme", "--as", "owner@acme.io", "--json", *options]
    return json.loads(ok(*arguments).stdout)


def test_a_key_is_limited_to_the_scopes_given_and_lists_show_them(acme: str) -> None:
    scoped = create("--name", "Stripe receiver", "--scope", "track", "--scope", "webhooks:stripe")
    everything = create("--name", "Backend")
    assert scoped["scopes"] == ["track", "webhooks:stripe"]
    assert everything["scopes"] == ["track", "jobs", "webhooks"]

    shown = json.loads(ok("keys", "show", str(scoped["id"]), "--json").stdout)
    listed = json.loads(ok("keys", "list", "--org", acme, "--json").stdout)
    assert shown["scopes"] == ["track", "webhooks:stripe"]
    assert [(key["name"], key["scopes"]) for key in listed] == [
        ("Stripe receiver", ["track", "webhooks:stripe"]),
        ("Backend", ["track", "jobs", "webhooks"]),
    ]
    table = ok("keys", "list", "--org", acme).stdout.splitlines()
    assert "SCOPES" in table[0].split()
    assert "track, webhooks:stripe" in table[1] and "  all  " in table[2]
    assert "SCOPES:           track, webhooks:stripe" in ok("keys", "show", str(scoped["id"])).stdout

    audit = json.loads(ok("audit", "list", "--org", acme, "--json").stdout)
    created = {entry["api_key_id"]: entry["detail"] for entry in audit if entry["action"] == "key.created"}
    assert created[scoped["id"]]["scopes"] == ["track", "webhooks:stripe"]
    assert created[everything["id"]]["scopes"] == ["track", "jobs", "webhooks"]


def test_a_rolled_key_keeps_its_scopes(acme: str) -> None:
    old = create("--name", "Jobs", "--scope", "jobs")
    new = json.loads(ok("keys", "roll", str(old["id"]), "--as", "owner@acme.io", "--grace", "0", "--json").stdout)
    assert new["scopes"] == ["jobs"] and new["replaces"] == old["id"]


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("trak", "unknown scope 'trak': a scope is track, jobs, webhooks or webhooks:PROVIDER (e.g. webhooks:stripe)"),
        ("webhooks:Stripe!", "'webhooks:Stripe!' names no provider"),
    ],
)
def test_a_scope_that_is_not_one_is_a_usage_mistake(acme: str, engine: Engine, scope: str, message: str) -> None:
    result = run("keys", "create", "--org", acme, "--name", "Typo", "--as", "owner@acme.io", "--scope", scope)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for '--scope'")
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_webhooks_beside_one_providers_webhooks_is_refused_with_one_line(acme: str, engine: Engine) -> None:
    result = run(
        "keys", "create", "--org", acme, "--name", "Both", "--as", "owner@acme.io",
        "--scope", "webhooks", "--scope", "webhooks:stripe",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: webhooks already covers every provider's webhooks: drop webhooks:stripe, "
        "or drop webhooks to allow only webhooks:stripe"
    ]
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


@pytest.mark.parametrize("actor", ["member@acme.io", "stranger@elsewhere.io"])
def test_only_owners_make_scoped_keys(acme: str, engine: Engine, actor: str) -> None:
    result = run("keys", "create", "--org", acme, "--name", "Mine", "--as", actor, "--scope", "track")
    assert result.exit_code == 1 and "only owners can create, roll or delete keys" in result.output
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0
