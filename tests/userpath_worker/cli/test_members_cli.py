"""``userpath orgs create`` and ``userpath members invite|reset-password`` print one-time links to
the web pages: what happened on standard error, the link as the last line of standard output."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.cli import ok, run
from tests.common.databases import table_dump
from tests.common.factories import PASSWORD
from userpath_worker.accounts import services as accounts
from userpath_worker.audit.models import AuditEntry
from userpath_worker.organizations.models import Member

BASE_URL = "https://userpath.example.com"


@pytest.fixture
def acme(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("USERPATH_WEB_BASE_URL", BASE_URL)
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", "owner@acme.io")
    return "Acme"


def link(stdout: str) -> str:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"{BASE_URL}/invitations/"), stdout
    return last


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def accept(engine: Engine, url: str, password: str = PASSWORD) -> str:
    with Session(engine) as session, session.begin():
        return accounts.accept_invitation(session, token_of(url), password).email


def roles(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {member.email: member.role.value for member in session.scalars(select(Member))}


def test_orgs_create_prints_the_owner_s_link_last(database_url: str, engine: Engine, monkeypatch) -> None:
    monkeypatch.setenv("USERPATH_WEB_BASE_URL", BASE_URL)
    result = ok("orgs", "create", "Acme", "--owner", "Owner@Acme.io")
    first, url = result.stdout.strip().splitlines()
    assert first.startswith("Created organization 'Acme' (id ")  # as before
    assert link(result.stdout) == url
    assert "owner@acme.io" in result.stderr and "one-time link, valid 72 hours" in result.stderr
    assert token_of(url) not in result.stderr
    assert accept(engine, url) == "owner@acme.io"


def test_the_link_starts_with_the_default_base_url(database_url: str) -> None:
    result = ok("orgs", "create", "Acme", "--owner", "owner@acme.io")
    assert result.stdout.strip().splitlines()[-1].startswith("http://127.0.0.1:8000/invitations/")


def test_invite_prints_a_link_they_use_once_to_become_a_member(acme: str, engine: Engine) -> None:
    result = ok("members", "invite", "--org", acme, "New@Acme.io")
    assert "Invited new@acme.io to 'Acme'." in result.stderr
    url = link(result.stdout)
    assert "new@acme.io" not in roles(engine)  # pending until accepted
    pending = json.loads(ok("members", "invitations", "--org", acme, "--json").stdout)
    # The default role; not the founder's link from orgs create: the founder is a member already.
    assert [(row["email"], row["role"], row["invited_by"]) for row in pending] == [
        ("new@acme.io", "member", "operator")
    ]
    table = ok("members", "invitations", "--org", acme).stdout.splitlines()
    assert table[0].split() == ["EMAIL", "ROLE", "INVITED", "BY", "EXPIRES", "(UTC)"] and len(table) == 2
    assert accept(engine, url) == "new@acme.io"
    assert roles(engine)["new@acme.io"] == "member"
    assert json.loads(ok("members", "invitations", "--org", acme, "--json").stdout) == []
    with pytest.raises(accounts.InvalidInvitation):
        accept(engine, url)
    with Session(engine) as session, session.begin():
        assert accounts.sign_in(session, "new@acme.io", PASSWORD, "127.0.0.1").email == "new@acme.io"


def test_invite_with_a_role_and_json(acme: str, engine: Engine) -> None:
    result = ok("members", "invite", "--org", acme, "admin@acme.io", "--role", "admin", "--json")
    document = json.loads(result.stdout)
    assert list(document) == ["url"] and document["url"].startswith(f"{BASE_URL}/invitations/")
    accept(engine, document["url"])
    assert roles(engine)["admin@acme.io"] == "admin"
    again = ok("members", "invite", "--org", acme, "admin@acme.io", "--role", "owner")
    assert roles(engine)["admin@acme.io"] == "admin"  # a member keeps their role; only a new link
    assert accept(engine, link(again.stdout)) == "admin@acme.io"


def test_reset_password_prints_a_new_link_and_revokes_older_ones(acme: str, engine: Engine) -> None:
    first = link(ok("members", "invite", "--org", acme, "new@acme.io").stdout)
    accept(engine, first)
    older = link(ok("members", "reset-password", "--org", acme, "new@acme.io").stdout)
    result = ok("members", "reset-password", "--org", acme, "New@acme.io", "--json")
    newest = json.loads(result.stdout)["url"]
    with pytest.raises(accounts.InvalidInvitation):
        accept(engine, older, "a brand new passphrase")
    assert accept(engine, newest, "a brand new passphrase") == "new@acme.io"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["members", "invite", "--org", "Nope", "new@acme.io"], "organization 'Nope' not found"),
        (["members", "invite", "--org", "Acme", "not-an-address"], "is not an e-mail address"),
        (["members", "reset-password", "--org", "Acme", "stranger@acme.io"], "is not a member of 'Acme'"),
        (["members", "reset-password", "--org", "Nope", "owner@acme.io"], "organization 'Nope' not found"),
    ],
)
def test_mistakes_are_one_line_and_print_no_link(acme: str, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "/invitations/" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["members", "invite", "new@acme.io"],
        ["members", "invite", "--org", "Acme", "new@acme.io", "--role", "boss"],
        ["members", "reset-password", "--org", "Acme"],
    ],
)
def test_usage_errors_exit_2(acme: str, args: list[str]) -> None:
    assert run(*args).exit_code == 2


def test_links_are_audited_by_the_operator_and_never_stored(acme: str, engine: Engine) -> None:
    urls = [link(ok("members", "invite", "--org", acme, "new@acme.io", "--role", "admin").stdout)]
    accept(engine, urls[0])
    urls.append(link(ok("members", "reset-password", "--org", acme, "new@acme.io").stdout))
    with Session(engine) as session:
        dump = table_dump(session, engine)
        columns = (AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
        audited = session.execute(select(*columns).order_by(AuditEntry.id))
        assert [tuple(row) for row in audited] == [
            ("operator", "member.invited", {"email": "owner@acme.io", "role": "owner"}),  # orgs create
            ("operator", "member.invited", {"email": "new@acme.io", "role": "admin"}),
            ("new@acme.io", "member.joined", {"email": "new@acme.io", "role": "admin"}),
            ("operator", "member.password_reset", {"email": "new@acme.io"}),
        ]
    for url in urls:
        assert token_of(url) not in dump


def test_members_add_takes_org_and_the_positional_form_still_works_with_a_deprecation(
    acme: str, engine: Engine
) -> None:
    added = ok("members", "add", "--org", acme, "Admin@acme.io", "--role", "admin")
    assert added.stdout.strip() == "Added admin@acme.io to 'Acme' as admin." and added.stderr == ""
    old_form = ok("members", "add", acme, "member@acme.io", "--role", "member")
    assert old_form.stdout.strip() == "Added member@acme.io to 'Acme' as member."
    assert old_form.stderr.strip() == (
        "Deprecated: `members add ORG EMAIL` will go; write `members add --org ORG EMAIL`."
    )
    assert roles(engine) == {"owner@acme.io": "owner", "admin@acme.io": "admin", "member@acme.io": "member"}


def test_members_list_owners_first(acme: str) -> None:
    ok("members", "add", "--org", acme, "b@acme.io", "--role", "member")
    ok("members", "add", "--org", acme, "a@acme.io", "--role", "admin")
    listed = json.loads(ok("members", "list", "--org", acme, "--json").stdout)
    assert [(m["email"], m["role"]) for m in listed] == [
        ("owner@acme.io", "owner"),
        ("a@acme.io", "admin"),
        ("b@acme.io", "member"),
    ]
    table = ok("members", "list", "--org", acme).stdout.splitlines()
    assert table[0].split() == ["EMAIL", "ROLE", "ADDED", "(UTC)"] and table[1].split()[:2] == [
        "owner@acme.io",
        "owner",
    ]


def test_set_role_and_remove_by_an_owner_are_audited(acme: str, engine: Engine) -> None:
    ok("members", "add", "--org", acme, "new@acme.io", "--role", "member")
    promoted = ok("members", "set-role", "--org", acme, "New@acme.io", "--role", "admin", "--as", "owner@acme.io")
    assert promoted.stdout.strip() == "new@acme.io is now admin of 'Acme'."
    as_json = ok(
        "members", "set-role", "--org", acme, "new@acme.io", "--role", "owner", "--as", "owner@acme.io", "--json"
    )
    assert (json.loads(as_json.stdout)["email"], json.loads(as_json.stdout)["role"]) == ("new@acme.io", "owner")
    removed = json.loads(
        ok("members", "remove", "--org", acme, "owner@acme.io", "--as", "new@acme.io", "--json").stdout
    )
    assert (removed["email"], removed["role"], removed["removed"]) == ("owner@acme.io", "owner", True)
    assert roles(engine) == {"new@acme.io": "owner"}
    actions = [entry["action"] for entry in json.loads(ok("audit", "list", "--org", acme, "--json").stdout)]
    assert actions[:3] == ["member.removed", "member.role_changed", "member.role_changed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["members", "set-role", "--org", "Acme", "owner@acme.io", "--role", "admin", "--as", "owner@acme.io"],
            "owner@acme.io is the last owner of 'Acme'; make another member an owner first",
        ),
        (
            ["members", "remove", "--org", "Acme", "owner@acme.io", "--as", "owner@acme.io"],
            "owner@acme.io is the last owner of 'Acme'; make another member an owner first",
        ),
        (
            ["members", "remove", "--org", "Acme", "owner@acme.io", "--as", "admin@acme.io"],
            "admin@acme.io is not an owner of 'Acme'; only owners can remove members",
        ),
        (
            ["members", "set-role", "--org", "Acme", "admin@acme.io", "--role", "owner", "--as", "admin@acme.io"],
            "admin@acme.io is not an owner of 'Acme'; only owners can change members' roles",
        ),
        (
            ["members", "set-role", "--org", "Acme", "nobody@acme.io", "--role", "admin", "--as", "owner@acme.io"],
            "nobody@acme.io is not a member of 'Acme'",
        ),
    ],
)
def test_members_changes_never_leave_an_organization_without_an_owner(
    acme: str, engine: Engine, args: list[str], message: str
) -> None:
    ok("members", "add", "--org", acme, "admin@acme.io", "--role", "admin")
    result = run(*args)
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert roles(engine) == {"owner@acme.io": "owner", "admin@acme.io": "admin"}
