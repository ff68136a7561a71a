"""E-mail addresses as they are stored and compared, the same for members, accounts and actors.

A leaf module: the audit log normalizes its actors with it, and the organizations (whose member
changes are audited) too, without either importing the other's package.
"""

from __future__ import annotations

from userpath_worker.errors import UserError


def normalize_email(email: str) -> str:
    """An e-mail address (a member's, an actor's) as it is stored and compared: trimmed, lower case."""
    return email.strip().lower()


def valid_email(email: str) -> str:
    """``email`` normalized; UserError unless it is one plain address (someone to add or invite, and
    to e-mail: nothing that would make a list of recipients or a header of it)."""
    email = normalize_email(email)
    local, _, domain = email.partition("@")
    if not local or not domain or "@" in domain or len(email) > 320:
        raise UserError(f"'{email}' is not an e-mail address")
    if any(character.isspace() or character in '<>,;"\\' or ord(character) < 32 for character in email):
        raise UserError(f"'{email}' is not an e-mail address")
    return email
