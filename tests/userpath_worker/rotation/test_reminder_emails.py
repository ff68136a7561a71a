"""Rotation reminders reach owners (issue 13): the link to the key on the API Keys page in the
webhook and the log line, and with USERPATH_SMTP_URL one plain-text e-mail to every owner, against
a local SMTP server (aiosmtpd) started by the test. Delivery runs in the test's rolled-back session
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from config.settings import Settings, SmtpServer, get_settings, parse_smtp_url
from tests.common.smtp import SmtpServer as LocalSmtpServer
from tests.common.webhook import WebhookServer
from userpath_worker import web_links
from userpath_worker.keys.models import ApiKey
from userpath_worker.mail import Mail
from userpath_worker.rotation import delivery
from userpath_worker.rotation.delivery import DeliveryOutcome
from userpath_worker.rotation.models import Reminder

OWNERS = ["owner@example.com", "second-owner@example.com"]
NOT_OWNERS = ["admin@example.com", "member@example.com"]
BASE_URL = "https://userpath.example.com"


def in_session(session: Session) -> Any:
    return lambda: contextlib.nullcontext(session)


@pytest.fixture
def smtp() -> Iterator[LocalSmtpServer]:
    server = LocalSmtpServer()
    yield server
    server.close()


def to_owners(server: LocalSmtpServer, sender: str = "userpath@localhost") -> Mail:
    return Mail(parse_smtp_url(server.url), sender)


def deliver(session: Session, recorded: Reminder, mail: Mail | None, webhook_url: str | None = None) -> Any:
    return delivery.deliver(in_session(session), recorded.id, webhook_url, web_base_url=BASE_URL, mail_to_owners=mail)


def link(recorded: Reminder) -> str:
    return f"{BASE_URL}/orgs/{recorded.org_id}/settings/api-keys#key-{recorded.api_key_id}"


def test_the_link_is_the_keys_row_on_its_organizations_page() -> None:
    assert web_links.key_anchor(7) == "key-7"
    assert web_links.key_url(BASE_URL, 3, 7) == f"{BASE_URL}/orgs/3/settings/api-keys#key-7"


def test_the_webhook_and_the_log_line_carry_the_link(
    session: Session, reminder: Any, webhook: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    recorded, _ = reminder
    caplog.set_level("INFO", logger="userpath.rotation")
    assert deliver(session, recorded, None, webhook.url).outcome is DeliveryOutcome.DELIVERED
    (body,) = webhook.bodies
    assert body["url"] == link(recorded)
    assert body["text"].endswith(f"Roll it, or delete it if it is unused: {link(recorded)}")
    assert f'"url": "{link(recorded)}"' in caplog.text


class TestEmail:
    def test_each_owner_gets_one_plain_text_email_with_the_link_and_never_the_key(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorded, plaintext = reminder
        caplog.set_level("DEBUG")
        assert deliver(session, recorded, to_owners(smtp)).outcome is DeliveryOutcome.DELIVERED

        assert [len(smtp.to(owner)) for owner in OWNERS] == [1, 1]
        assert [len(smtp.to(other)) for other in NOT_OWNERS] == [0, 0]
        (received,) = smtp.received
        key = session.get_one(ApiKey, recorded.api_key_id)
        message = received.message
        assert received.sender == message["From"] == "userpath@localhost"
        assert message["To"] == ", ".join(OWNERS)
        assert message["Subject"] == f"Rotate API key 'App X Production Server' ({key.display}) of Acme"
        assert message.get_content_type() == "text/plain" and not message.is_multipart()
        body = message.get_content()
        assert body.startswith(f"The API key 'App X Production Server' ({key.display}) of Acme should be rotated:\n")
        assert "- it is 100 days old\n- it was never used\n" in body
        assert f"\n{link(recorded)}\n" in body
        assert "owner of Acme" in body
        assert plaintext not in received.raw.decode() and plaintext not in caplog.text
        assert recorded.emailed_at is not None and recorded.delivered_at is not None
        assert (recorded.attempts, recorded.last_error) == (1, None)

    def test_the_delivery_task_emails_through_the_configured_server_from_the_configured_sender(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from tasks import rotation as rotation_tasks

        recorded, _ = reminder
        monkeypatch.setenv("USERPATH_SMTP_URL", smtp.url)
        monkeypatch.setenv("USERPATH_SMTP_FROM", "reminders@acme.example")
        monkeypatch.setenv("USERPATH_WEB_BASE_URL", BASE_URL)
        get_settings.cache_clear()
        monkeypatch.setattr(rotation_tasks, "_transaction", in_session(session))
        assert rotation_tasks.deliver_reminder.apply(args=(recorded.id,)).get() == "delivered"
        (received,) = smtp.received
        assert received.message["From"] == "reminders@acme.example"
        assert link(recorded) in received.message.get_content()

    def test_without_an_smtp_server_nobody_is_emailed(self, session: Session, reminder: Any) -> None:
        recorded, _ = reminder
        assert deliver(session, recorded, None).outcome is DeliveryOutcome.DELIVERED
        assert recorded.emailed_at is None

    def test_a_refused_message_is_retried_like_a_refused_webhook(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer
    ) -> None:
        recorded, _ = reminder
        smtp.refuse_data = ["451 4.3.0 try again later"]
        result = deliver(session, recorded, to_owners(smtp))
        assert result == delivery.DeliveryResult(DeliveryOutcome.FAILED, "the SMTP server refused the message (451)")
        assert (recorded.claimed_at, recorded.emailed_at, recorded.attempts) == (None, None, 1)
        assert list(delivery.unclaimed_reminders(in_session(session))) == [recorded.id]
        assert deliver(session, recorded, to_owners(smtp)).outcome is DeliveryOutcome.DELIVERED
        assert (len(smtp.received), recorded.attempts) == (1, 2)

    def test_an_unreachable_server_is_retried_until_the_attempts_run_out(self, session: Session, reminder: Any) -> None:
        recorded, _ = reminder
        closed = LocalSmtpServer()
        closed.close()  # nothing listens on its port any more
        for _ in range(delivery.MAX_ATTEMPTS):
            assert deliver(session, recorded, to_owners(closed)).outcome is DeliveryOutcome.FAILED
        assert deliver(session, recorded, to_owners(closed)).outcome is DeliveryOutcome.NOT_PENDING
        assert recorded.last_error == "the SMTP server is unreachable (ConnectionRefusedError)"

    def test_after_the_email_a_refused_webhook_is_retried_alone(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer
    ) -> None:
        recorded, _ = reminder
        webhook = WebhookServer(statuses=[503])
        try:
            assert deliver(session, recorded, to_owners(smtp), webhook.url).outcome is DeliveryOutcome.FAILED
            assert recorded.emailed_at is not None and recorded.claimed_at is None
            assert deliver(session, recorded, to_owners(smtp), webhook.url).outcome is DeliveryOutcome.DELIVERED
        finally:
            webhook.close()
        assert (len(smtp.received), len(webhook.bodies), recorded.attempts) == (1, 2, 2)

    def test_no_answer_to_the_message_is_never_sent_again(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        recorded, _ = reminder
        smtp.data_delay = 1.0
        monkeypatch.setattr(delivery, "SMTP_TIMEOUT_SECONDS", 0.2)
        result = deliver(session, recorded, to_owners(smtp))
        assert result == delivery.DeliveryResult(
            DeliveryOutcome.UNKNOWN, "no answer from the SMTP server (SMTPServerDisconnected)"
        )
        assert deliver(session, recorded, to_owners(smtp)).outcome is DeliveryOutcome.NOT_PENDING
        assert recorded.delivered_at is None and recorded.claimed_at is not None

    def test_an_owner_the_server_refuses_is_not_retried_when_it_took_the_others(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer
    ) -> None:
        recorded, _ = reminder
        smtp.refuse_recipients = {"second-owner@example.com"}
        assert deliver(session, recorded, to_owners(smtp)).outcome is DeliveryOutcome.DELIVERED
        assert [received.recipients for received in smtp.received] == [["owner@example.com"]]
        assert recorded.last_error == "the SMTP server refused 1 of 2 owners"

    def test_every_owner_refused_is_a_refusal(self, session: Session, reminder: Any, smtp: LocalSmtpServer) -> None:
        recorded, _ = reminder
        smtp.refuse_recipients = set(OWNERS)
        result = deliver(session, recorded, to_owners(smtp))
        assert result == delivery.DeliveryResult(DeliveryOutcome.FAILED, "the SMTP server refused every recipient")

    def test_a_login_is_never_sent_without_starttls(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer
    ) -> None:
        recorded, _ = reminder
        server = parse_smtp_url(f"smtp://userpath:s3cret@127.0.0.1:{smtp.port}")
        result = deliver(session, recorded, Mail(server, "userpath@localhost"))
        assert result == delivery.DeliveryResult(
            DeliveryOutcome.FAILED, "the SMTP server does not offer STARTTLS, which a login requires"
        )
        assert smtp.received == [] and "s3cret" not in (recorded.last_error or "")

    def test_a_line_break_in_a_key_name_stays_out_of_the_subject(
        self, session: Session, reminder: Any, smtp: LocalSmtpServer
    ) -> None:
        recorded, _ = reminder
        session.get_one(ApiKey, recorded.api_key_id).name = "App X\nBcc: someone@example.net"
        session.flush()
        assert deliver(session, recorded, to_owners(smtp)).outcome is DeliveryOutcome.DELIVERED
        (received,) = smtp.received
        assert received.message["Bcc"] is None and received.recipients == OWNERS
        assert received.message["Subject"].startswith("Rotate API key 'App X Bcc: someone@example.net' (")


class TestSettings:
    def test_smtp_urls(self) -> None:
        assert parse_smtp_url("smtp://127.0.0.1:2525") == SmtpServer("127.0.0.1", 2525, implicit_tls=False)
        assert parse_smtp_url("smtp://relay.internal") == SmtpServer("relay.internal", 25, implicit_tls=False)
        submission = parse_smtp_url("smtp://user:pass@mail.example.com:587")
        assert (submission.port, submission.starttls, submission.username) == (587, True, "user")
        tls = parse_smtp_url("smtps://me%40example.com:p%40ss%3Aword@mail.example.com")
        assert tls == SmtpServer("mail.example.com", 465, True, "me@example.com", "p@ss:word")
        assert not tls.starttls and "p@ss" not in repr(tls)

    def test_the_settings_give_the_server_and_the_sender(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert (Settings().smtp_server, Settings().smtp_from) == (None, "userpath@localhost")
        monkeypatch.setenv("USERPATH_SMTP_URL", "smtps://user:s3cret@mail.example.com:465")
        monkeypatch.setenv("USERPATH_SMTP_FROM", " reminders@example.com ")
        settings = get_settings()
        assert settings.smtp_server == SmtpServer("mail.example.com", 465, True, "user", "s3cret")
        assert settings.smtp_from == "reminders@example.com"
        assert "s3cret" not in repr(settings)
