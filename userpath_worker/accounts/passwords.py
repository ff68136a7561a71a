"""Passwords: argon2id with OWASP's parameters, and the policy a new password must meet.

OWASP's Password Storage Cheat Sheet: argon2id, m=19 MiB (19456 KiB), t=2, p=1. Only the
encoded hash (parameters, salt and digest) is ever stored.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from userpath_worker.errors import UserError

MIN_LENGTH = 12
# argon2 reads the whole password; a megabyte-long one would still be hashed. Nobody types more.
MAX_LENGTH = 1024

HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)


class WeakPassword(UserError):
    """A new password that breaks the policy: shorter than 12 characters, or the e-mail itself."""


def check_policy(password: str, email: str) -> None:
    """WeakPassword unless ``password`` is an acceptable new password for ``email``."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password must be at most {MAX_LENGTH} characters")
    if password.strip().lower() == email.strip().lower():
        raise WeakPassword("a password must not be your e-mail address")


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def verify(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``. Without a hash (an unknown e-mail, an account
    that never set a password) it checks against a dummy hash, so the answer takes as long."""
    try:
        return HASHER.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a stored hash was made with other parameters than today's (rehash it at sign-in)."""
    return HASHER.check_needs_rehash(password_hash)


@functools.cache
def _dummy_hash() -> str:
    return HASHER.hash(secrets.token_urlsafe(16))
