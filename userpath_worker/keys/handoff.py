"""Handing a new key from the POST that made it to the page that shows it, once (post-redirect-get).

The POST keeps the key encrypted in ``key_handoffs`` under a Fernet key derived from a random token,
and gives the token to the browser's session alone; the redirected GET brings the token back,
deletes the row and decrypts. So the key is never in a URL, the cookie holds no key (only a token
that opens one row, once), the table holds no usable key without the token, and a refresh finds
nothing: the page then lists the keys instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from cryptography.fernet import InvalidToken
from sqlalchemy import delete
from sqlalchemy.orm import Session

from userpath_worker.db import utcnow
from userpath_worker.encryption import derived_fernet
from userpath_worker.keys.models import KeyHandoff

# Long enough for a redirect and a slow page load; an unclaimed key is then only in the list.
LIFETIME = dt.timedelta(minutes=10)
_PURPOSE = b"userpath key hand-off v1"


def hand_off(session: Session, key_id: int, account_id: int, plaintext: str) -> str:
    """Keep ``plaintext`` of key ``key_id`` for account ``account_id``; the token that takes it back."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(delete(KeyHandoff).where(KeyHandoff.expires_at <= now))  # the unclaimed ones, past use
    session.add(
        KeyHandoff(
            token_digest=_digest(token),
            api_key_id=key_id,
            account_id=account_id,
            ciphertext=derived_fernet(token, _PURPOSE).encrypt(plaintext.encode()).decode(),
            expires_at=now + LIFETIME,
        )
    )
    session.flush()
    return token


def take(session: Session, token: str, key_id: int, account_id: int) -> str | None:
    """The key handed off under ``token``, for this key and account, removed as it is read; None
    when it was taken already, has expired, or is another's."""
    handoff = session.execute(
        delete(KeyHandoff)
        .where(
            KeyHandoff.token_digest == _digest(token),
            KeyHandoff.api_key_id == key_id,
            KeyHandoff.account_id == account_id,
        )
        .returning(KeyHandoff.ciphertext, KeyHandoff.expires_at)
    ).first()
    if handoff is None or handoff.expires_at <= utcnow():
        return None
    try:
        return derived_fernet(token, _PURPOSE).decrypt(handoff.ciphertext.encode()).decode()
    except InvalidToken:
        return None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
