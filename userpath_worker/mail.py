"""Sending one plain-text e-mail through the SMTP server of ``USERPATH_SMTP_URL`` (stdlib smtplib).

A send says, as a webhook POST does, whether the server certainly did not take the message
(MailRefused: no connection, TLS or login failed, the sender or every recipient refused, the
message itself refused with an error reply) or may have (MailUnanswered: the connection broke or
timed out after the message was sent and before the server's answer to it). Error messages name
the failure and the server's reply code, never the server's address, its credentials or a recipient.
"""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from config.settings import Settings, SmtpServer

TIMEOUT_SECONDS = 10.0


class MailRefused(Exception):
    """The SMTP server certainly did not take the message."""


class MailUnanswered(Exception):
    """The message went out but the server's answer did not come: it may have taken it."""


@dataclass(frozen=True, slots=True)
class Sent:
    """The server took the message for ``accepted``; it refused ``refused`` (each refused one RCPT)."""

    accepted: list[str]
    refused: list[str]


@dataclass(frozen=True, slots=True)
class Mail:
    """Owners are e-mailed through ``server``, from ``sender`` (USERPATH_SMTP_URL, USERPATH_SMTP_FROM)."""

    server: SmtpServer
    sender: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Mail | None:
        server = settings.smtp_server
        return cls(server, settings.smtp_from) if server else None


# RFC 5322's limit of 998 characters a line, not the 78 it recommends: a subject naming a key and an
# organization stays on one line, and an ASCII body is sent as written (7bit), not quoted-printable.
POLICY = email.policy.SMTP.clone(max_line_length=998)


def plain_text(sender: str, recipients: list[str], subject: str, body: str) -> EmailMessage:
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    # text/plain, UTF-8; quoted-printable when it is not ASCII (no 8BITMIME needed of the server).
    message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
    return message


def send(server: SmtpServer, message: EmailMessage, timeout: float = TIMEOUT_SECONDS) -> Sent:
    """Send ``message`` from its From to every address of its To, in one SMTP transaction."""
    sender = str(message["From"])
    recipients = [address.strip() for address in str(message["To"]).split(",") if address.strip()]
    try:
        smtp = _connect(server, timeout)
    except (OSError, smtplib.SMTPException) as error:
        raise MailRefused(f"the SMTP server is unreachable ({type(error).__name__})") from None
    try:
        accepted = _envelope(smtp, server, sender, recipients)
        # From here on the server may take the message: only an error reply proves it did not.
        try:
            code, _ = smtp.data(message.as_bytes(policy=message.policy.clone(linesep="\r\n")))
        except smtplib.SMTPDataError as error:
            raise MailRefused(f"the SMTP server refused the message ({error.smtp_code})") from None
        except (OSError, smtplib.SMTPException) as error:
            raise MailUnanswered(f"no answer from the SMTP server ({type(error).__name__})") from None
        if code != 250:
            raise MailRefused(f"the SMTP server refused the message ({code})")
        return Sent(accepted, [address for address in recipients if address not in accepted])
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


def _connect(server: SmtpServer, timeout: float) -> smtplib.SMTP:
    context = ssl.create_default_context()
    if server.implicit_tls:
        return smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


def _envelope(smtp: smtplib.SMTP, server: SmtpServer, sender: str, recipients: list[str]) -> list[str]:
    """Greet, secure, log in, and give the sender and the recipients; the ones the server took."""
    try:
        smtp.ehlo()
        if server.starttls:
            # A password is never sent in clear: without STARTTLS the server gets no login.
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if server.username is not None and server.password is not None:
            smtp.login(server.username, server.password)
        code, _ = smtp.mail(sender)
        if code != 250:
            raise MailRefused(f"the SMTP server refused the sender ({code})")
        accepted = [address for address in recipients if smtp.rcpt(address)[0] in (250, 251)]
    except smtplib.SMTPAuthenticationError as error:
        raise MailRefused(f"the SMTP server refused the login ({error.smtp_code})") from None
    except smtplib.SMTPNotSupportedError:
        raise MailRefused("the SMTP server does not offer STARTTLS, which a login requires") from None
    except (OSError, smtplib.SMTPException) as error:
        raise MailRefused(f"the SMTP session failed before the message was sent ({type(error).__name__})") from None
    if not accepted:
        raise MailRefused("the SMTP server refused every recipient")
    return accepted
