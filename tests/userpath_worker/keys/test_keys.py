"""The key lifecycle service against SQLite and real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import time_machine
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from tests.common.databases import table_dump
from tests.common.factories import OWNER, add_member, make_organization
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.errors import Conflict, NotFound, PermissionDenied, UserError
from userpath_worker.keys import tokens
from userpath_worker.keys.models import KeyStatus, key_status
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure, Environment
from userpath_worker.organizations.models import Role


def test_create_returns_the_plaintext_once_and_stores_only_its_digest(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    key, plaintext = keys.create(organization, "App X Production Server", OWNER)

    assert tokens.parse(plaintext) == tokens.ParsedKey(Environment.LIVE, plaintext)
    assert key.digest == tokens.digest(plaintext)
    assert key.display == tokens.display_form(plaintext)
    assert key.status() is KeyStatus.ACTIVE
    assert keys.authenticate(plaintext) == KeyIdentity(key.id, organization.id, Environment.LIVE, key.display, None)


def test_a_test_key_authenticates_as_the_test_environment(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    key, plaintext = keys.create(organization, "App X Staging", OWNER, environment=Environment.TEST)
    assert plaintext.startswith("up_test_")
    identity = keys.authenticate(plaintext)
    assert isinstance(identity, KeyIdentity) and identity.environment is Environment.TEST


def test_names_are_unique_among_an_orgs_current_keys(session: Session, keys: KeyService) -> None:
    first, second = make_organization(session), make_organization(session)
    key, _ = keys.create(first, "Webhook Handler", OWNER)
    keys.create(second, "Webhook Handler", OWNER)  # another org may use the same name
    with pytest.raises(Conflict, match="already exists"):
        keys.create(first, "Webhook Handler", OWNER)
    keys.delete(key.id, OWNER)
    keys.create(first, "Webhook Handler", OWNER)  # a deleted key frees its name


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_a_name_must_be_1_to_100_characters(session: Session, keys: KeyService, name: str) -> None:
    with pytest.raises(UserError, match="1 to 100"):
        keys.create(make_organization(session), name, OWNER)


def test_list_shows_every_key_with_its_status_and_never_a_secret(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    active, _ = keys.create(organization, "Active", OWNER)
    deleted, _ = keys.create(organization, "Deleted", OWNER)
    rolled, _ = keys.create(organization, "Rolled", OWNER)
    keys.delete(deleted.id, OWNER)
    replacement, _ = keys.roll(rolled.id, OWNER)

    statuses = {key.id: key.status() for key in keys.list(organization, include_deleted=True)}
    assert statuses == {
        active.id: KeyStatus.ACTIVE,
        deleted.id: KeyStatus.DELETED,
        rolled.id: KeyStatus.EXPIRING,
        replacement.id: KeyStatus.ACTIVE,
    }
    assert [key.id for key in keys.list(organization)] == [active.id, rolled.id, replacement.id]  # as the pages
    assert keys.list(make_organization(session)) == []


def test_listing_gives_the_current_keys_as_rows_with_the_same_status(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    active, _ = keys.create(organization, "Active", OWNER, Environment.TEST, dt.timedelta(days=30))
    deleted, _ = keys.create(organization, "Deleted", OWNER)
    rolled, _ = keys.create(organization, "Rolled", OWNER)
    keys.delete(deleted.id, OWNER)
    replacement, _ = keys.roll(rolled.id, OWNER)
    now = utcnow()

    rows = keys.listing(organization)
    assert [row.id for row in rows] == [active.id, rolled.id, replacement.id]  # no deleted key
    for row in rows:
        key = keys.get(row.id)
        assert (row.name, row.display, row.environment, row.expires_at) == (
            key.name,
            key.display,
            key.environment,
            key.expires_at,
        )
        assert key_status(None, row.expired_at, row.expires_at, row.rolled_at, now) is key.status(now)
    assert keys.listing(make_organization(session)) == []


def test_an_expiring_key_turns_expired_at_its_expiry(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    key, plaintext = keys.create(organization, "Short-lived", OWNER, expires_in=dt.timedelta(days=90))
    assert key.expires_at is not None
    with time_machine.travel(key.expires_at - dt.timedelta(seconds=1)):
        assert isinstance(keys.authenticate(plaintext), KeyIdentity)
    with time_machine.travel(key.expires_at):
        assert keys.authenticate(plaintext) is AuthFailure.EXPIRED
        assert key.status() is KeyStatus.EXPIRED


class TestRoll:
    def test_the_old_key_works_until_the_grace_period_ends(self, session: Session, keys: KeyService) -> None:
        organization = make_organization(session)
        old, old_plaintext = keys.create(organization, "App X Production Server", OWNER)
        with time_machine.travel(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), tick=False):
            new, new_plaintext = keys.roll(old.id, OWNER, grace=dt.timedelta(hours=24))
        assert (new.name, new.environment) == (old.name, old.environment)
        assert old.replaced_by_id == new.id
        assert old.expires_at == dt.datetime(2026, 1, 2, tzinfo=dt.UTC)

        with time_machine.travel(dt.datetime(2026, 1, 1, 23, 59, 59, tzinfo=dt.UTC)):
            assert isinstance(keys.authenticate(old_plaintext), KeyIdentity)
            assert old.status() is KeyStatus.EXPIRING
        with time_machine.travel(dt.datetime(2026, 1, 2, tzinfo=dt.UTC)):
            assert keys.authenticate(old_plaintext) is AuthFailure.EXPIRED
            assert isinstance(keys.authenticate(new_plaintext), KeyIdentity)

    def test_a_zero_grace_stops_the_old_key_at_once(self, session: Session, keys: KeyService) -> None:
        old, old_plaintext = keys.create(make_organization(session), "Server", OWNER)
        keys.roll(old.id, OWNER, grace=dt.timedelta(0))
        assert keys.authenticate(old_plaintext) is AuthFailure.EXPIRED

    @pytest.mark.parametrize("grace", [dt.timedelta(days=7), dt.timedelta(days=7, seconds=1), -dt.timedelta(seconds=1)])
    def test_the_grace_period_is_at_most_seven_days(
        self, session: Session, keys: KeyService, grace: dt.timedelta
    ) -> None:
        old, _ = keys.create(make_organization(session), "Server", OWNER)
        if dt.timedelta(0) <= grace <= dt.timedelta(days=7):
            keys.roll(old.id, OWNER, grace=grace)
            assert old.expires_at is not None and old.expires_at - old.rolled_at == grace
        else:
            with pytest.raises(UserError, match="between 0 and 7d"):
                keys.roll(old.id, OWNER, grace=grace)

    def test_a_grace_never_extends_an_earlier_expiry(self, session: Session, keys: KeyService) -> None:
        old, _ = keys.create(make_organization(session), "Server", OWNER, expires_in=dt.timedelta(hours=1))
        keys.roll(old.id, OWNER, grace=dt.timedelta(days=7))
        assert old.expires_at is not None and old.expires_at - old.created_at == dt.timedelta(hours=1)

    def test_a_rolled_or_deleted_key_cannot_be_rolled(self, session: Session, keys: KeyService) -> None:
        organization = make_organization(session)
        rolled, _ = keys.create(organization, "Rolled", OWNER)
        deleted, _ = keys.create(organization, "Deleted", OWNER)
        keys.roll(rolled.id, OWNER)
        keys.delete(deleted.id, OWNER)
        for key in (rolled, deleted):
            with pytest.raises(Conflict, match="cannot be rolled"):
                keys.roll(key.id, OWNER)

    def test_rolling_a_rolled_key_again_names_its_replacement(self, session: Session, keys: KeyService) -> None:
        old, _ = keys.create(make_organization(session), "Server", OWNER)
        new, _ = keys.roll(old.id, OWNER)
        with pytest.raises(Conflict, match=f"key {new.id} already replaced it; roll key {new.id} instead"):
            keys.roll(old.id, OWNER)


def test_a_deleted_key_stops_authenticating_at_once(session: Session, keys: KeyService) -> None:
    key, plaintext = keys.create(make_organization(session), "Server", OWNER)
    keys.delete(key.id, OWNER)
    assert keys.authenticate(plaintext) is AuthFailure.DELETED
    with pytest.raises(Conflict, match="already deleted"):
        keys.delete(key.id, OWNER)


def test_an_unknown_key_is_refused(keys: KeyService) -> None:
    assert keys.authenticate(tokens.generate(Environment.LIVE)) is AuthFailure.UNKNOWN


def test_malformed_and_bad_checksum_keys_cost_no_query(session: Session, keys: KeyService, engine: Engine) -> None:
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        good = tokens.generate(Environment.LIVE)
        assert keys.authenticate("not a key") is AuthFailure.MALFORMED
        assert keys.authenticate(good[:-1] + ("0" if good[-1] != "0" else "1")) is AuthFailure.BAD_CHECKSUM
        assert statements == []
        keys.authenticate(good)
        assert any("FROM api_keys" in statement for statement in statements)  # it sees real lookups
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_a_pepper_is_needed_to_find_a_peppered_key(session: Session) -> None:
    peppered = KeyService(session, pepper="s3cret-pepper")
    key, plaintext = peppered.create(make_organization(session), "Server", OWNER)
    assert key.digest == tokens.digest(plaintext, "s3cret-pepper")
    assert isinstance(peppered.authenticate(plaintext), KeyIdentity)
    assert KeyService(session).authenticate(plaintext) is AuthFailure.UNKNOWN


class TestOwnersOnly:
    @pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, None])
    def test_only_owners_create_roll_and_delete(self, session: Session, keys: KeyService, role: Role | None) -> None:
        organization = make_organization(session)
        actor = "someone@example.com"
        if role is not None:
            add_member(session, organization, actor, role)
        key, _ = keys.create(organization, "Server", OWNER)
        with pytest.raises(PermissionDenied, match="only owners"):
            keys.create(organization, "Other", actor)
        with pytest.raises(PermissionDenied, match="only owners"):
            keys.roll(key.id, actor)
        with pytest.raises(PermissionDenied, match="only owners"):
            keys.delete(key.id, actor)
        assert key.status() is KeyStatus.ACTIVE

    def test_an_owner_of_another_org_is_refused(self, session: Session, keys: KeyService) -> None:
        mine = make_organization(session, owner="me@example.com")
        theirs = make_organization(session, owner="them@example.com")
        key, _ = keys.create(mine, "Server", "me@example.com")
        with pytest.raises(PermissionDenied):
            keys.delete(key.id, "them@example.com")
        with pytest.raises(PermissionDenied):
            keys.create(mine, "Sneaky", "them@example.com")
        keys.create(theirs, "Theirs", "them@example.com")

    def test_an_unknown_key_id_is_not_found(self, keys: KeyService) -> None:
        with pytest.raises(NotFound, match="keys list"):
            keys.delete(999_999, OWNER)


def test_every_create_roll_and_delete_is_audited(session: Session, keys: KeyService) -> None:
    organization = make_organization(session)
    key, _ = keys.create(organization, "Server", OWNER)
    new, _ = keys.roll(key.id, OWNER)
    keys.delete(new.id, OWNER)
    entries = session.scalars(select(AuditEntry).where(AuditEntry.org_id == organization.id).order_by(AuditEntry.id))
    assert [(e.actor, e.action, e.api_key_id) for e in entries] == [
        (OWNER, "key.created", key.id),
        (OWNER, "key.rolled", key.id),
        (OWNER, "key.deleted", new.id),
    ]


def test_the_plaintext_key_is_in_no_table_and_no_log(
    session: Session, keys: KeyService, engine: Engine, all_logs: pytest.LogCaptureFixture
) -> None:
    organization = make_organization(session)
    created, first = keys.create(organization, "Server", OWNER)
    _, second = keys.roll(created.id, OWNER)
    keys.authenticate(first)
    keys.authenticate(second)
    logging.getLogger("userpath.test").info("lifecycle done at %s", utcnow())

    dump = table_dump(session, engine)
    assert created.digest in dump  # the dump really reads the key table
    assert "sqlalchemy.engine" in {record.name.rsplit(".", 1)[0] for record in all_logs.records}
    for secret in (first, second):
        assert secret not in dump
        assert secret not in all_logs.text
    assert not tokens.KEY_PATTERN.search(dump + all_logs.text)
