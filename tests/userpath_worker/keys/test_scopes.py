"""Key scopes (issue 21, item 6): reading what a person chose, the one rule that permits a source,
keys made and rolled with them, the authenticator's cache, and the migration that gives every
existing key all of them. Against SQLite and real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database
from tests.common.factories import OWNER, make_organization
from userpath_worker import schema
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import make_engine, utcnow
from userpath_worker.errors import UserError
from userpath_worker.events.models import Source
from userpath_worker.keys import scopes, tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.scopes import parse_scope, parse_scopes, permits
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.models import Organization


@pytest.mark.parametrize("text", ["track", "jobs", "webhooks", "webhooks:stripe", " webhooks:standard-webhooks "])
def test_a_scope_is_a_source_or_one_providers_webhooks(text: str) -> None:
    assert parse_scope(text) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trak", "unknown scope 'trak': a scope is track, jobs, webhooks or webhooks:PROVIDER (e.g. webhooks:stripe)"),
        ("Track", "unknown scope 'Track'"),
        ("", "unknown scope ''"),
        ("webhook:stripe", "unknown scope 'webhook:stripe'"),
        ("track:stripe", "unknown scope 'track:stripe'"),
        ("webhooks:", "'webhooks:' names no provider: after 'webhooks:' come 1 to 50 lowercase letters"),
        ("webhooks:Stripe", "'webhooks:Stripe' names no provider"),
        ("webhooks:a b", "'webhooks:a b' names no provider"),
        ("webhooks:" + "x" * 51, "names no provider"),
    ],
)
def test_anything_else_is_refused_with_one_line_that_says_what_a_scope_is(text: str, message: str) -> None:
    with pytest.raises(UserError) as refused:
        parse_scope(text)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_chosen_scopes_are_canonical_and_all_three_are_every_scope() -> None:
    assert parse_scopes(["webhooks:stripe", "track", "track"]) == frozenset({"track", "webhooks:stripe"})
    assert parse_scopes(["jobs", "webhooks", "track"]) is None  # the same as a key without scopes
    with pytest.raises(UserError, match="choose at least one scope"):
        parse_scopes([])
    with pytest.raises(UserError, match="webhooks already covers every provider's webhooks: drop webhooks:stripe"):
        parse_scopes(["webhooks", "webhooks:stripe"])


@pytest.mark.parametrize(
    ("chosen", "allowed"),
    [
        (None, {"server", "job", "webhook:stripe", "webhook:github", "webhook:None"}),
        ({"track"}, {"server"}),
        ({"jobs"}, {"job"}),
        ({"webhooks"}, {"webhook:stripe", "webhook:github", "webhook:None"}),
        ({"webhooks:stripe"}, {"webhook:stripe"}),
        ({"track", "webhooks:stripe", "webhooks:github"}, {"server", "webhook:stripe", "webhook:github"}),
    ],
)
def test_a_key_may_send_exactly_what_its_scopes_permit(chosen: set[str] | None, allowed: set[str]) -> None:
    key_scopes = None if chosen is None else frozenset(chosen)
    cases = {
        "server": (Source.SERVER, None),
        "job": (Source.JOB, None),
        "webhook:stripe": (Source.WEBHOOK, "stripe"),
        "webhook:github": (Source.WEBHOOK, "github"),
        "webhook:None": (Source.WEBHOOK, None),  # a webhook whose provider is missing or not text
    }
    assert {name for name, (source, provider) in cases.items() if permits(key_scopes, source, provider)} == allowed
    assert not permits(frozenset({"webhooks:stripe"}), Source.WEBHOOK, ["stripe"])  # type: ignore[arg-type]


def test_lists_show_the_sources_first_then_providers() -> None:
    assert scopes.listed(None) == ["track", "jobs", "webhooks"]
    assert scopes.listed(frozenset({"webhooks:stripe", "jobs", "webhooks:github"})) == [
        "jobs",
        "webhooks:github",
        "webhooks:stripe",
    ]
    assert scopes.described(None) == "all"
    assert scopes.described(["webhooks:stripe", "track"]) == "track, webhooks:stripe"


def test_a_key_made_with_scopes_authenticates_with_them_and_the_creation_is_audited(
    session: Session, keys: KeyService
) -> None:
    organization = make_organization(session)
    key, plaintext = keys.create(organization, "Stripe webhook URL", OWNER, scopes=frozenset({"webhooks:stripe"}))
    everything, everything_plaintext = keys.create(organization, "Backend", OWNER)

    assert key.scopes == ["webhooks:stripe"] and everything.scopes is None
    identity = keys.authenticate(plaintext)
    assert isinstance(identity, KeyIdentity) and identity.scopes == frozenset({"webhooks:stripe"})
    unrestricted = keys.authenticate(everything_plaintext)
    assert isinstance(unrestricted, KeyIdentity) and unrestricted.scopes is None
    audited = {
        entry.api_key_id: entry.detail
        for entry in session.scalars(select(AuditEntry).where(AuditEntry.action == "key.created"))
    }
    assert audited[key.id] == {"environment": "live", "scopes": ["webhooks:stripe"]}
    assert audited[everything.id] == {"environment": "live", "scopes": ["track", "jobs", "webhooks"]}
    rows = {row.id: row.scopes for row in keys.listing(organization)}
    assert rows == {key.id: ["webhooks:stripe"], everything.id: None}


def test_the_service_checks_scopes_whoever_calls_it(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    with pytest.raises(UserError, match="choose at least one scope"):
        keys.create(organization, "Nothing", OWNER, scopes=frozenset())
    with pytest.raises(UserError, match="unknown scope 'everything'"):
        keys.create(organization, "Typo", OWNER, scopes=frozenset({"everything"}))
    key, _ = keys.create(organization, "All three", OWNER, scopes=frozenset({"track", "jobs", "webhooks"}))
    assert key.scopes is None
    assert keys.list(organization) == [key]


def test_a_rolled_key_keeps_its_scopes(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    old, _ = keys.create(organization, "Jobs", OWNER, scopes=frozenset({"jobs", "webhooks:github"}))
    new, plaintext = keys.roll(old.id, OWNER)
    assert new.scopes == ["jobs", "webhooks:github"]
    identity = keys.authenticate(plaintext)
    assert isinstance(identity, KeyIdentity) and identity.scopes == frozenset({"jobs", "webhooks:github"})


def test_the_authenticators_cache_carries_the_scopes(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    _, plaintext = keys.create(organization, "Track only", OWNER, scopes=frozenset({"track"}))
    authenticator = KeyAuthenticator(pepper=None, ttl=60)
    first = authenticator.authenticate(session, plaintext)
    cached = authenticator.authenticate(session, plaintext)
    assert (authenticator.misses, authenticator.hits) == (1, 1)
    assert isinstance(cached, KeyIdentity) and cached is first and cached.scopes == frozenset({"track"})


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'userpath.db'}"
        if request.param == "sqlite"
        else fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_scopes_migration")
    )
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_migration_0010_gives_every_existing_key_every_scope_and_goes_back(empty_engine: Engine) -> None:
    config = schema.alembic_config(empty_engine)
    command.upgrade(config, "0008")
    plaintext = tokens.generate(Environment.LIVE)
    with empty_engine.begin() as connection:  # a key as release 0008 made it: no scopes column yet
        org_id = connection.execute(
            insert(Organization.__table__).values(name="Before Scopes", created_at=utcnow())
        ).inserted_primary_key[0]
        connection.execute(
            insert(ApiKey.__table__).values(
                org_id=org_id,
                name="Old",
                environment="live",
                digest=tokens.digest(plaintext),
                display=tokens.display_form(plaintext),
                created_by=OWNER,
                created_at=utcnow(),
            )
        )
    command.upgrade(config, "0010")
    with Session(empty_engine) as session:
        identity = KeyService(session).authenticate(plaintext)
        assert session.scalars(select(ApiKey.scopes)).one() is None
    assert isinstance(identity, KeyIdentity) and identity.scopes is None
    assert all(permits(identity.scopes, source, "stripe") for source in Source)
    command.downgrade(config, "0008")
    command.upgrade(config, "head")
