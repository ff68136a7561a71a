"""Key rotation: the pass across every threshold, reminders, expiry, delivery, settings.

The pass and delivery run in the test's rolled-back session on SQLite and PostgreSQL; passes
that must really run at once use committed data in a database of their own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from celery.schedules import crontab
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from config.beat import beat_schedule
from config.celery import FLAG_STALE_KEYS_TASK
from config.schedules import parse_schedule
from config.settings import Settings, SettingsError, get_settings
from tests.common.cli import ok, run
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database, table_dump
from tests.common.factories import OWNER, make_organization
from tests.common.webhook import WebhookServer
from userpath_worker import schema
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import make_engine, make_session_factory
from userpath_worker.keys.models import ApiKey, KeyStatus
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure
from userpath_worker.rotation import delivery
from userpath_worker.rotation.delivery import DeliveryOutcome
from userpath_worker.rotation.models import Reminder
from userpath_worker.rotation.services import RotationPolicy, run_pass, stale_keys

T0 = dt.datetime(2026, 1, 1, 3, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
POLICY = RotationPolicy.from_settings(Settings())  # 90 days old, 30 unused, 7 expiring, remind every 7


def in_session(session: Session) -> Any:
    """A transaction factory for the services that hands out the test's own session."""
    return lambda: contextlib.nullcontext(session)


def test_a_pass_whose_now_is_before_the_flag_is_in_the_first_reminder_interval() -> None:
    flagged_at = dt.datetime(2026, 5, 1, 3, 0, tzinfo=dt.UTC)
    for now in (flagged_at - dt.timedelta(seconds=1), flagged_at, flagged_at + dt.timedelta(days=6)):
        assert POLICY.reminder_due_at(flagged_at, now) == flagged_at
    assert POLICY.reminder_due_at(flagged_at, flagged_at + dt.timedelta(days=7)) == flagged_at + dt.timedelta(days=7)


def rotate(session: Session, policy: RotationPolicy = POLICY) -> dict[str, list[int]]:
    """One pass; the ids of the keys flagged, cleared, reminded and expired."""
    changes: dict[str, list[int]] = {"flagged": [], "cleared": [], "reminded": [], "expired": []}
    for batch in run_pass(in_session(session), policy):
        for kind in changes:
            changes[kind] += [change.key_id for change in getattr(batch, kind)]
    return changes


def reminders(session: Session, key: ApiKey) -> list[Reminder]:
    return list(session.scalars(select(Reminder).where(Reminder.api_key_id == key.id).order_by(Reminder.due_at)))


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


class TestThresholds:
    def test_a_key_never_used_is_unused_from_its_creation(self, session: Session, keys: KeyService, clock: Any) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 30 * DAY - dt.timedelta(seconds=1))
        assert rotate(session)["flagged"] == []
        clock.move_to(T0 + 30 * DAY)
        assert rotate(session)["flagged"] == [key.id]
        assert (key.flagged_at, key.flag_reasons) == (T0 + 30 * DAY, ["unused"])

    def test_use_counts_from_the_last_use_and_clears_the_flag(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        key.last_used_at = T0 + 10 * DAY
        clock.move_to(T0 + 40 * DAY - dt.timedelta(seconds=1))
        assert rotate(session)["flagged"] == []
        clock.move_to(T0 + 40 * DAY)
        assert rotate(session)["flagged"] == [key.id]

        key.last_used_at = T0 + 41 * DAY
        clock.move_to(T0 + 41 * DAY)
        assert rotate(session)["cleared"] == [key.id]
        assert (key.flagged_at, key.flag_reasons) == (None, None)

    def test_a_key_older_than_the_maximum_age_is_too_old(self, session: Session, keys: KeyService, clock: Any) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 90 * DAY - dt.timedelta(seconds=1))
        key.last_used_at = T0 + 89 * DAY
        assert rotate(session)["flagged"] == []
        clock.move_to(T0 + 90 * DAY)
        assert rotate(session)["flagged"] == [key.id]
        assert key.flag_reasons == ["too_old"]

    def test_a_key_is_expiring_soon_within_the_window_before_it_expires(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER, expires_in=20 * DAY)
        key.last_used_at = T0 + 12 * DAY
        clock.move_to(T0 + 13 * DAY - dt.timedelta(seconds=1))
        assert rotate(session)["flagged"] == []
        clock.move_to(T0 + 13 * DAY)
        assert rotate(session)["flagged"] == [key.id]
        assert key.flag_reasons == ["expiring_soon"]

    def test_reasons_accumulate_and_the_first_flag_time_stays(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 30 * DAY)
        rotate(session)
        clock.move_to(T0 + 90 * DAY)
        assert rotate(session)["flagged"] == [key.id]
        assert (key.flagged_at, key.flag_reasons) == (T0 + 30 * DAY, ["too_old", "unused"])

    def test_the_thresholds_come_from_the_settings(
        self, session: Session, keys: KeyService, clock: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("USERPATH_ROTATION_UNUSED_DAYS", "3")
        policy = RotationPolicy.from_settings(get_settings())
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 3 * DAY)
        assert rotate(session, policy)["flagged"] == [key.id]

    def test_a_pass_leaves_other_keys_and_never_stores_a_secret(
        self, session: Session, keys: KeyService, engine: Engine, clock: Any
    ) -> None:
        organization = make_organization(session)
        stale, plaintext = keys.create(organization, "Stale", OWNER)
        clock.move_to(T0 + 31 * DAY)
        fresh, _ = keys.create(organization, "Fresh", OWNER)
        assert rotate(session)["flagged"] == [stale.id]
        assert fresh.flagged_at is None
        assert [key.id for key, org in stale_keys(session, organization)] == [stale.id]
        assert plaintext not in table_dump(session, engine)


class TestReminders:
    def test_one_reminder_per_key_per_interval(self, session: Session, keys: KeyService, clock: Any) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 30 * DAY)
        assert rotate(session)["reminded"] == [key.id]
        assert rotate(session)["reminded"] == []  # the same pass again
        clock.move_to(T0 + 36 * DAY)
        assert rotate(session)["reminded"] == []
        clock.move_to(T0 + 37 * DAY)
        assert rotate(session)["reminded"] == [key.id]
        assert [(r.due_at, r.reasons, r.delivered_at, r.attempts) for r in reminders(session, key)] == [
            (T0 + 30 * DAY, ["unused"], None, 0),
            (T0 + 37 * DAY, ["unused"], None, 0),
        ]

    def test_the_unique_constraint_refuses_a_second_reminder_for_an_interval(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER)
        row = {"api_key_id": key.id, "org_id": key.org_id, "reasons": ["unused"], "due_at": T0}
        session.add(Reminder(**row))
        session.flush()
        with pytest.raises(Exception, match="(?i)unique"), session.begin_nested():
            session.add(Reminder(**row))
            session.flush()

    def test_rolling_or_deleting_clears_the_flag_and_the_replacement_starts_fresh(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        organization = make_organization(session)
        rolled, _ = keys.create(organization, "Rolled", OWNER)
        deleted, _ = keys.create(organization, "Deleted", OWNER)
        clock.move_to(T0 + 30 * DAY)
        assert rotate(session)["flagged"] == [rolled.id, deleted.id]

        replacement, _ = keys.roll(rolled.id, OWNER)
        keys.delete(deleted.id, OWNER)
        assert [(k.flagged_at, k.flag_reasons) for k in (rolled, deleted, replacement)] == [(None, None)] * 3
        assert rotate(session) == {"flagged": [], "cleared": [], "reminded": [], "expired": []}
        assert stale_keys(session, organization) == []


class TestExpiry:
    def expiries(self, session: Session, key: ApiKey) -> list[dict[str, Any]]:
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.api_key_id == key.id, AuditEntry.action == "key.expired")
        )
        return [{"actor": entry.actor, **entry.detail} for entry in entries]

    def test_a_rolled_key_is_marked_expired_when_its_grace_period_ends(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        old, _ = keys.create(make_organization(session), "Server", OWNER)
        keys.roll(old.id, OWNER, grace=DAY)
        clock.move_to(T0 + DAY - dt.timedelta(seconds=1))
        assert rotate(session)["expired"] == []
        clock.move_to(T0 + DAY)
        assert rotate(session)["expired"] == [old.id]
        assert rotate(session)["expired"] == []  # once
        assert (old.expired_at, old.status()) == (T0 + DAY, KeyStatus.EXPIRED)
        assert self.expiries(session, old) == [
            {"actor": "system", "reason": "roll_grace_ended", "expires_at": (T0 + DAY).isoformat()}
        ]

    def test_a_key_is_marked_expired_at_its_expiry_and_its_flag_cleared(
        self, session: Session, keys: KeyService, clock: Any
    ) -> None:
        key, _ = keys.create(make_organization(session), "Server", OWNER, expires_in=10 * DAY)
        clock.move_to(T0 + 5 * DAY)
        assert rotate(session)["flagged"] == [key.id]
        clock.move_to(T0 + 10 * DAY)
        assert rotate(session)["expired"] == [key.id]
        assert (key.flagged_at, key.status()) == (None, KeyStatus.EXPIRED)
        assert self.expiries(session, key)[0]["reason"] == "expires_at_passed"

    def test_the_hard_expiry_is_off_by_default(self, session: Session, keys: KeyService, clock: Any) -> None:
        key, plaintext = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 30 * DAY)
        rotate(session)
        clock.move_to(T0 + 3000 * DAY)
        assert rotate(session)["expired"] == []
        assert isinstance(keys.authenticate(plaintext), KeyIdentity)

    def test_the_hard_expiry_stops_a_key_n_days_after_it_was_flagged(
        self, session: Session, keys: KeyService, clock: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("USERPATH_ROTATION_HARD_EXPIRY_DAYS", "14")
        policy = RotationPolicy.from_settings(get_settings())
        key, plaintext = keys.create(make_organization(session), "Server", OWNER)
        clock.move_to(T0 + 30 * DAY)
        rotate(session, policy)
        clock.move_to(T0 + 44 * DAY - dt.timedelta(seconds=1))
        assert rotate(session, policy)["expired"] == []
        clock.move_to(T0 + 44 * DAY)
        assert rotate(session, policy)["expired"] == [key.id]
        assert key.expires_at == T0 + 44 * DAY
        assert keys.authenticate(plaintext) is AuthFailure.EXPIRED
        assert self.expiries(session, key)[0]["reason"] == "hard_expiry"


@pytest.fixture(scope="module")
def concurrent_url() -> str:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_concurrent")
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    return url


def test_two_passes_at_once_record_the_same_flags_and_one_reminder_per_key(concurrent_url: str) -> None:
    engine = make_engine(concurrent_url, pool_size=4)
    sessions = make_session_factory(engine)
    with time_machine.travel(T0, tick=False) as clock:
        with sessions.begin() as session:
            organization = make_organization(session)
            for number in range(2500):  # several batches
                KeyService(session).create(organization, f"Key {number}", OWNER)
        clock.move_to(T0 + 30 * DAY)
        start = threading.Barrier(2)
        reminded: list[int] = []

        def one_pass() -> None:
            start.wait()
            for batch in run_pass(sessions.begin, POLICY):
                reminded.append(len(batch.reminded))

        threads = [threading.Thread(target=one_pass) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Reminder)) == 2500
        assert sum(reminded) == 2500
        flags = connection.execute(select(ApiKey.flagged_at, func.count()).group_by(ApiKey.flagged_at)).all()
        assert flags == [(T0 + 30 * DAY, 2500)]
        connection.execute(text("TRUNCATE organizations, api_keys, reminders, audit_log, members CASCADE"))
        connection.commit()
    engine.dispose()


class TestDelivery:
    def test_the_webhook_gets_slack_text_and_structured_fields_and_no_secret(
        self, session: Session, reminder: Any, webhook: WebhookServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorded, plaintext = reminder
        caplog.set_level("INFO", logger="userpath.rotation")
        assert delivery.deliver(in_session(session), recorded.id, webhook.url).outcome is DeliveryOutcome.DELIVERED

        (body,) = webhook.bodies
        key = session.get_one(ApiKey, recorded.api_key_id)
        assert body["text"].startswith(f"API key 'App X Production Server' ({key.display}) of Acme should be rotated")
        assert "100 days old" in body["text"] and "never used" in body["text"]
        assert {
            name: body[name] for name in ("org", "key_name", "display", "reasons", "age_days", "last_used_at", "owners")
        } == {
            "org": "Acme",
            "key_name": "App X Production Server",
            "display": key.display,
            "reasons": ["too_old", "unused"],
            "age_days": 100,
            "last_used_at": None,
            "owners": ["owner@example.com", "second-owner@example.com"],
        }
        assert plaintext not in json.dumps(body) and plaintext not in caplog.text
        assert "secret" not in caplog.text  # nor the webhook URL, which is one
        (line,) = [
            record.getMessage() for record in caplog.records if record.getMessage().startswith("rotation reminder {")
        ]
        assert json.loads(line.removeprefix("rotation reminder "))["reminder_id"] == recorded.id
        assert (recorded.delivered_at is not None, recorded.attempts) == (True, 1)

    def test_without_a_webhook_the_log_line_is_the_delivery(
        self, session: Session, reminder: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorded, _ = reminder
        caplog.set_level("INFO", logger="userpath.rotation")
        assert delivery.deliver(in_session(session), recorded.id, None).outcome is DeliveryOutcome.DELIVERED
        assert "rotation reminder {" in caplog.text and recorded.delivered_at is not None

    def test_a_reminder_is_delivered_at_most_once(
        self, session: Session, reminder: Any, webhook: WebhookServer
    ) -> None:
        recorded, _ = reminder
        assert delivery.deliver(in_session(session), recorded.id, webhook.url).outcome is DeliveryOutcome.DELIVERED
        assert delivery.deliver(in_session(session), recorded.id, webhook.url).outcome is DeliveryOutcome.NOT_PENDING
        assert len(webhook.bodies) == 1
        assert list(delivery.unclaimed_reminders(in_session(session))) == []

    def test_a_refusal_releases_the_claim_for_a_retry(
        self, session: Session, reminder: Any, webhook: WebhookServer
    ) -> None:
        recorded, _ = reminder
        webhook.statuses = [503]
        result = delivery.deliver(in_session(session), recorded.id, webhook.url)
        assert result == delivery.DeliveryResult(DeliveryOutcome.FAILED, "the webhook answered HTTP 503")
        assert (recorded.claimed_at, recorded.delivered_at, recorded.attempts) == (None, None, 1)
        assert list(delivery.unclaimed_reminders(in_session(session))) == [recorded.id]
        assert delivery.deliver(in_session(session), recorded.id, webhook.url).outcome is DeliveryOutcome.DELIVERED
        assert (len(webhook.bodies), recorded.attempts) == (2, 2)

    def test_an_unreachable_webhook_is_retried_until_the_attempts_run_out(
        self, session: Session, reminder: Any
    ) -> None:
        recorded, _ = reminder
        closed = WebhookServer()
        closed.close()  # nothing listens on its port any more
        for _ in range(delivery.MAX_ATTEMPTS):
            assert delivery.deliver(in_session(session), recorded.id, closed.url).outcome is DeliveryOutcome.FAILED
        assert delivery.deliver(in_session(session), recorded.id, closed.url).outcome is DeliveryOutcome.NOT_PENDING
        assert "unreachable" in recorded.last_error and "secret" not in recorded.last_error

    def test_no_answer_is_never_sent_again(
        self, session: Session, reminder: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        recorded, _ = reminder
        slow = WebhookServer(delay=1.0)
        monkeypatch.setattr(delivery, "WEBHOOK_TIMEOUT_SECONDS", 0.2)
        try:
            assert delivery.deliver(in_session(session), recorded.id, slow.url).outcome is DeliveryOutcome.UNKNOWN
            assert delivery.deliver(in_session(session), recorded.id, slow.url).outcome is DeliveryOutcome.NOT_PENDING
        finally:
            slow.close()
        assert len(slow.bodies) == 1 and recorded.delivered_at is None and recorded.claimed_at is not None

    def test_a_reminder_for_a_key_rolled_since_is_not_sent(
        self, session: Session, keys: KeyService, reminder: Any, webhook: WebhookServer
    ) -> None:
        recorded, _ = reminder
        keys.roll(recorded.api_key_id, OWNER)
        assert delivery.deliver(in_session(session), recorded.id, webhook.url).outcome is DeliveryOutcome.OBSOLETE
        assert webhook.bodies == []


def test_the_delivery_task_retries_with_backoff_until_the_webhook_takes_it(
    session: Session, reminder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import rotation as rotation_tasks

    recorded, _ = reminder
    server = WebhookServer(statuses=[500, 502])
    monkeypatch.setenv("USERPATH_REMINDER_WEBHOOK_URL", server.url)
    get_settings.cache_clear()  # importing the tasks read the settings already
    monkeypatch.setattr(rotation_tasks, "_transaction", in_session(session))
    delays: list[float] = []
    monkeypatch.setattr(
        rotation_tasks.UserPathTask, "retry_delay", lambda task: delays.append(task.request.retries) or 0
    )
    try:
        rotation_tasks.deliver_reminder.apply(args=(recorded.id,))
    finally:
        server.close()
    assert len(server.bodies) == 3 and delays == [0, 1]
    assert (recorded.attempts, recorded.delivered_at is not None) == (3, True)


class TestSettings:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("USERPATH_ROTATION_SCHEDULE", "15 4 * *"),
            ("USERPATH_ROTATION_SCHEDULE", "0 25 * * *"),
            ("USERPATH_ROTATION_SCHEDULE", "daily"),
            ("USERPATH_ROTATION_SCHEDULE", "0m"),
            ("USERPATH_ROTATION_MAX_AGE_DAYS", "0"),
            ("USERPATH_ROTATION_HARD_EXPIRY_DAYS", "-3"),
            ("USERPATH_REMINDER_WEBHOOK_URL", "ftp://hooks.example.com/x"),
            ("USERPATH_REMINDER_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/secret"),
            ("USERPATH_SMTP_URL", "mail.example.com:25"),
            ("USERPATH_SMTP_URL", "http://mail.example.com"),
            ("USERPATH_SMTP_URL", "smtp://:25"),
            ("USERPATH_SMTP_URL", "smtp://mail.example.com:smtp"),
            ("USERPATH_SMTP_URL", "smtp://mail.example.com:70000"),
            ("USERPATH_SMTP_URL", "smtp://mail.example.com:0"),
            ("USERPATH_SMTP_URL", "smtps://user:s3cret@mail.example.com:x"),
            ("USERPATH_SMTP_URL", "smtps://user@mail.example.com"),
            ("USERPATH_SMTP_URL", "smtp://mail.example.com/inbox"),
            ("USERPATH_SMTP_URL", "smtp://mail.example.com?tls=1"),
            ("USERPATH_SMTP_FROM", "UserPath"),
            ("USERPATH_SMTP_FROM", "a@b.example, c@d.example"),
            ("USERPATH_SMTP_FROM", "UserPath <userpath@example.com>"),
        ],
    )
    def test_a_bad_value_stops_with_one_line(self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
        monkeypatch.setenv(variable, value)
        with pytest.raises(SettingsError) as error:
            get_settings()
        assert str(error.value).startswith(f"invalid setting {variable}: ")
        assert "\n" not in str(error.value) and value not in str(error.value)

    def test_the_default_schedule_is_daily_at_three_utc(self) -> None:
        schedule = beat_schedule(Settings())[FLAG_STALE_KEYS_TASK]
        assert schedule["task"] == FLAG_STALE_KEYS_TASK
        assert schedule["schedule"] == crontab(minute="0", hour="3")

    def test_an_interval_schedule_is_for_tests_and_demos(self) -> None:
        assert parse_schedule("2s") == dt.timedelta(seconds=2)


class TestCommands:
    @pytest.fixture
    def acme(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
        """Organization Acme with a stale key "Old" (100 days, never used) and a fresh key "New"."""
        monkeypatch.setenv("USERPATH_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
        with time_machine.travel(T0, tick=False) as clock:
            ok("orgs", "create", "Acme", "--owner", "owner@acme.io")
            old = ok("keys", "create", "--org", "Acme", "--name", "Old", "--as", "owner@acme.io").stdout.strip()
            clock.move_to(T0 + 100 * DAY)
            ok("keys", "create", "--org", "Acme", "--name", "New", "--as", "owner@acme.io")
            yield "Acme", old

    def test_rotation_run_prints_what_it_flagged_reminded_and_expired(
        self, acme: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level("INFO", logger="userpath.rotation")
        output = ok("rotation", "run").stdout.splitlines()
        assert output[0].startswith("flagged   key 1 'Old' (up_live_") and output[0].endswith(
            "of Acme: too_old, unused"
        )
        assert output[1].startswith("reminded  key 1 'Old'")
        assert output[-1] == "Flagged 1, cleared 0, reminded 1, expired 0 keys; delivered 1 reminders."
        assert ok("rotation", "run").stdout.splitlines() == [
            "Flagged 0, cleared 0, reminded 0, expired 0 keys; delivered 0 reminders."
        ]
        assert "rotation reminder {" in caplog.text

    def test_keys_list_and_stale_show_the_flag_and_its_reasons(self, acme: Any) -> None:
        org, plaintext = acme
        ok("rotation", "run")
        listing = ok("keys", "list", "--org", org).stdout.splitlines()
        assert listing[0].split()[-1] == "FLAG"
        assert listing[1].endswith("too_old,unused") and listing[2].endswith("-")

        stale = ok("keys", "stale").stdout.splitlines()
        assert stale[0].split() == [
            *("ID", "ORG", "NAME", "KEY", "REASONS"),
            *("FLAGGED", "(UTC)", "LAST", "USED", "(UTC)", "EXPIRES", "(UTC)"),
        ]
        assert len(stale) == 2 and "Acme" in stale[1] and "too_old,unused" in stale[1]
        (flagged,) = json.loads(ok("keys", "stale", "--org", org, "--json").stdout)
        assert (flagged["name"], flagged["org"], flagged["flag_reasons"]) == ("Old", "Acme", ["too_old", "unused"])
        assert flagged["flagged_at"] == (T0 + 100 * DAY).isoformat()
        assert plaintext not in json.dumps(flagged)

    def test_an_unknown_organization_is_one_line(self, acme: Any) -> None:
        result = run("keys", "stale", "--org", "Nope")
        assert (result.exit_code, result.output) == (
            1,
            "Error: organization 'Nope' not found; create it with `userpath orgs create`\n",
        )
