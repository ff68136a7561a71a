"""``userpath webhooks secrets add|list|remove``: the secret comes from standard input, is stored
only encrypted, never shown again; owners only, audit-logged."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from config.settings import get_settings
from tests.common.cli import ok, run
from tests.common.databases import table_dump
from tests.common.signing import GITHUB_SECRET, STRIPE_SECRET, TEST_SECRET_KEY
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import make_engine
from userpath_worker.webhooks.crypto import SECRET_KEY_FILE, SecretBox
from userpath_worker.webhooks.models import WebhookSecret

OWNER = "owner@acme.io"


@pytest.fixture
def acme(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("USERPATH_SECRET_KEY", TEST_SECRET_KEY)
    ok("db", "upgrade")
    ok("orgs", "create", "Acme", "--owner", OWNER)
    ok("members", "add", "--org", "Acme", "admin@acme.io", "--role", "admin")
    return "Acme"


def add(secret: str, provider: str = "stripe", actor: str = OWNER) -> str:
    return ok("webhooks", "secrets", "add", "--org", "Acme", "--provider", provider, "--as", actor, input=secret).output


def listing(as_json: bool = False) -> str:
    return ok("webhooks", "secrets", "list", "--org", "Acme", *(["--json"] if as_json else [])).output


def test_secrets_are_added_from_standard_input_listed_by_display_form_and_removed(acme: str, engine: Engine) -> None:
    out = add(STRIPE_SECRET + "\n")
    assert "Added stripe secret 1 (whsec_...stuv)" in out and STRIPE_SECRET not in out
    add("whsec_test_rotated_secret_00000000000001")  # two at once: the rotation has no gap
    add(GITHUB_SECRET, "github")

    listed = json.loads(listing(as_json=True))
    assert [(s["id"], s["provider"], s["display"], s["created_by"]) for s in listed] == [
        (3, "github", "...6789", OWNER),
        (1, "stripe", "whsec_...stuv", OWNER),
        (2, "stripe", "whsec_...0001", OWNER),
    ]
    assert all(s["created_at"] for s in listed)
    table = listing()
    assert table.splitlines()[0].split() == ["ID", "PROVIDER", "SECRET", "ADDED", "(UTC)", "BY"]
    assert "whsec_...stuv" in table

    with Session(engine) as session:
        dump = table_dump(session, engine)
        [stored] = session.scalars(select(WebhookSecret).where(WebhookSecret.id == 1))
    for secret in (STRIPE_SECRET, GITHUB_SECRET, STRIPE_SECRET.removeprefix("whsec_")):
        assert secret not in dump and secret not in table
    assert SecretBox(TEST_SECRET_KEY).decrypt(stored.ciphertext) == STRIPE_SECRET

    out = ok("webhooks", "secrets", "remove", "1", "--as", OWNER).output
    assert out.strip() == "Removed stripe secret 1 (whsec_...stuv); 1 left, its webhooks must still verify."
    out = ok("webhooks", "secrets", "remove", "2", "--as", OWNER).output
    assert "0 left, its webhooks are now stored unverified" in out
    assert [s["id"] for s in json.loads(listing(as_json=True))] == [3]

    with Session(engine) as session:
        audit = [(e.actor, e.action, e.detail) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert [a for a in audit if a[1].startswith("webhook_secret.")] == [
        (OWNER, "webhook_secret.added", {"secret_id": 1, "provider": "stripe", "display": "whsec_...stuv"}),
        (OWNER, "webhook_secret.added", {"secret_id": 2, "provider": "stripe", "display": "whsec_...0001"}),
        (OWNER, "webhook_secret.added", {"secret_id": 3, "provider": "github", "display": "...6789"}),
        (OWNER, "webhook_secret.removed", {"secret_id": 1, "provider": "stripe", "display": "whsec_...stuv"}),
        (OWNER, "webhook_secret.removed", {"secret_id": 2, "provider": "stripe", "display": "whsec_...0001"}),
    ]

    # For scripts: what was added or removed, by display form only.
    rotated = ok(
        "webhooks",
        "secrets",
        "add",
        "--org",
        "Acme",
        "--provider",
        "github",
        "--as",
        OWNER,
        "--json",
        input="github-secret-rotated-4321",
    ).output
    added = json.loads(rotated)
    assert (added["id"], added["provider"], added["display"], added["created_by"]) == (4, "github", "...4321", OWNER)
    assert "github-secret-rotated" not in rotated
    removed = json.loads(ok("webhooks", "secrets", "remove", "3", "--as", OWNER, "--json").output)
    assert (removed["id"], removed["removed"], removed["left"]) == (3, True, 1)


@pytest.mark.parametrize("actor", ["admin@acme.io", "stranger@elsewhere.io"])
def test_only_owners_add_and_remove_secrets(acme: str, actor: str) -> None:
    refused = run("webhooks", "secrets", "add", "--org", "Acme", "--provider", "stripe", "--as", actor, input="s")
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        f"Error: {actor} is not an owner of 'Acme'; only owners can add or remove webhook signing secrets"
    )
    add(STRIPE_SECRET)
    refused = run("webhooks", "secrets", "remove", "1", "--as", actor)
    assert refused.exit_code == 1 and "only owners can add or remove webhook signing secrets" in refused.output
    assert len(json.loads(listing(as_json=True))) == 1


@pytest.mark.parametrize(
    ("provider", "secret", "message"),
    [
        ("acme", "s3cret", "no signature check is registered for provider 'acme'; known providers: github, shopify,"),
        ("stripe", "  \n", "a signing secret must be 1 to 1000 characters; paste it on standard input"),
        ("svix", "whsec_not base64!", "that is not a svix signing secret: a Standard Webhooks secret is whsec_"),
    ],
)
def test_a_bad_provider_or_secret_is_one_line(acme: str, provider: str, secret: str, message: str) -> None:
    result = run("webhooks", "secrets", "add", "--org", "Acme", "--provider", provider, "--as", OWNER, input=secret)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert message in result.output and (secret.strip() == "" or secret not in result.output)


def test_the_same_secret_twice_is_refused(acme: str) -> None:
    add(STRIPE_SECRET)
    result = run(
        "webhooks", "secrets", "add", "--org", "Acme", "--provider", "stripe", "--as", OWNER, input=STRIPE_SECRET
    )
    assert result.exit_code == 1
    assert result.output.strip() == "Error: that secret is already stored for stripe (id 1)"


def test_the_secret_is_never_an_argument(acme: str) -> None:
    result = run("webhooks", "secrets", "add", "--org", "Acme", "--provider", "stripe", "--as", OWNER, STRIPE_SECRET)
    assert result.exit_code == 2  # a usage mistake: there is no such argument


def test_a_removed_id_or_another_unknown_one_is_one_line(acme: str) -> None:
    result = run("webhooks", "secrets", "remove", "9", "--as", OWNER)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: webhook secret 9 not found; `userpath webhooks secrets list --org ORG` shows ids"
    )


def test_against_postgresql_adding_needs_the_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.delenv("USERPATH_SECRET_KEY", raising=False)
    result = run("webhooks", "secrets", "add", "--org", "Acme", "--provider", "stripe", "--as", OWNER, input="s")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: USERPATH_SECRET_KEY is not set; set it to a long random value")


def test_on_the_embedded_database_the_secret_key_is_generated_once_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("USERPATH_DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'u.db'}")
    monkeypatch.delenv("USERPATH_SECRET_KEY", raising=False)
    ok("orgs", "create", "Acme", "--owner", OWNER)
    add(STRIPE_SECRET)
    add(GITHUB_SECRET, "github")  # the same key again: the first secret is still readable (checked on add)
    kept = tmp_path / "data" / SECRET_KEY_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'u.db'}")
    with Session(engine) as session:
        stored = session.scalars(select(WebhookSecret).order_by(WebhookSecret.id)).all()
        assert [SecretBox(kept.read_text().strip()).decrypt(s.ciphertext) for s in stored] == [
            STRIPE_SECRET,
            GITHUB_SECRET,
        ]
    engine.dispose()


def test_a_webhook_source_prints_its_url_once_with_a_key_limited_to_the_provider(
    acme: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USERPATH_EDGE_BASE_URL", "https://events.acme.io")
    get_settings.cache_clear()  # read again, with the edge's address
    created = json.loads(
        ok("webhooks", "sources", "create", "--org", "Acme", "--provider", "stripe", "--as", OWNER, "--json").output
    )
    url = created["url"]
    assert url.startswith("https://events.acme.io/v1/webhooks/stripe/up_live_")
    key = url.rsplit("/", 1)[1]
    shown = json.loads(ok("keys", "show", str(created["key_id"]), "--json").output)
    assert shown["scopes"] == ["webhooks:stripe"]
    assert key not in json.dumps(shown)  # the URL's key is shown once, as any key
    assert created["name"] == "stripe webhooks (live)"
    text = ok("webhooks", "sources", "create", "--org", "Acme", "--provider", "github", "--as", OWNER).output
    assert "/v1/webhooks/github/up_live_" in text and "may send only github webhooks" in text
    # Named as Settings → Webhooks names them (the same service): a second one is numbered.
    again = json.loads(
        ok("webhooks", "sources", "create", "--org", "Acme", "--provider", "stripe", "--as", OWNER, "--json").output
    )
    assert again["name"] == "stripe webhooks (live) 2"
    test_source = json.loads(
        ok(
            "webhooks",
            "sources",
            "create",
            "--org",
            "Acme",
            "--provider",
            "stripe",
            "--env",
            "test",
            "--as",
            OWNER,
            "--json",
        ).output
    )
    assert test_source["name"] == "stripe webhooks (test)" and "/v1/webhooks/stripe/up_test_" in test_source["url"]

    refused = run("webhooks", "sources", "create", "--org", "Acme", "--provider", "Not A Provider", "--as", OWNER)
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    denied = run("webhooks", "sources", "create", "--org", "Acme", "--provider", "stripe", "--as", "admin@acme.io")
    assert denied.exit_code == 1  # an admin may not make keys: owners only
