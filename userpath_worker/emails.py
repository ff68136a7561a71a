"""E-mail addresses as they are stored and compared, the same for members, accounts and actors.

A leaf module: the audit log normalizes its actors with it, and the organizations (whose member
changes are audited) too, without either importing the other's package.
"""

from __future__ import annotations


def normalize_email(email: str) -> str:
    """An e-mail address (a member's, an actor's) as it is stored and compared: trimmed, lower case."""
    return email.strip().lower()
