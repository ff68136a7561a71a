"""E-mailing a one-time link to the address it is for, through USERPATH_SMTP_URL.

With an SMTP server the web pages never show an owner the link of an invitation or a reset: only
whoever reads the invitee's mailbox can use it. The link is in the e-mail's body and nowhere else:
no log line, no error message.
"""

from __future__ import annotations

from config.settings import Settings
from userpath_worker import mail
from userpath_worker.accounts.services import INVITATION_LIFETIME
from userpath_worker.organizations.models import Role

_HOURS = int(INVITATION_LIFETIME.total_seconds() // 3600)


def send_invitation(settings: Settings, email: str, organization: str, role: Role, inviter: str, link: str) -> None:
    """E-mail ``email`` its invitation ``link``; MailRefused or MailUnanswered if it did not go."""
    subject = f"{inviter} invited you to join {organization} on UserPath"
    body = (
        f"{inviter} invited {email} to join the organization {organization} on UserPath as {role.value}.\n\n"
        f"To accept, open this link within {_HOURS} hours (it works once):\n\n{link}\n\n"
        "Until you accept you are not a member. If you did not expect this invitation, ignore this e-mail.\n"
    )
    _send(settings, email, subject, body)


def send_reset(settings: Settings, email: str, organization: str, owner: str, link: str) -> None:
    """E-mail ``email`` a ``link`` to set a new password; MailRefused or MailUnanswered if it did not go."""
    subject = f"Set a new UserPath password ({organization})"
    body = (
        f"{owner}, an owner of {organization} on UserPath, sent {email} a link to set a new password.\n\n"
        f"Open it within {_HOURS} hours (it works once); every browser signed in as you is signed out:\n\n"
        f"{link}\n\nIf you did not ask for it, ignore this e-mail: your password stays as it is.\n"
    )
    _send(settings, email, subject, body)


def _send(settings: Settings, email: str, subject: str, body: str) -> None:
    server = settings.smtp_server
    assert server is not None, "links are e-mailed only when USERPATH_SMTP_URL is set"
    # A subject is one line whatever an organization's name holds.
    mail.send(server, mail.plain_text(settings.smtp_from, [email], " ".join(subject.split()), body))
