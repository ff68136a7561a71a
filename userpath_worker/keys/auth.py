"""Authentication for the worker's hot path: an in-process cache in front of the key lookup.

The common case (a known, valid key) costs no query. Entries live ``ttl`` seconds, so a key
deleted or rolled elsewhere is refused by every worker process within that time; an expiry
time is re-checked on every use, so expiry is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.orm import Session

from userpath_worker.db import utcnow
from userpath_worker.keys import tokens
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure

LAST_USED_RESOLUTION = 60.0  # seconds: last_used_at is a hint for rotation, not an audit trail


class KeyAuthenticator:
    def __init__(
        self,
        pepper: str | None,
        ttl: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pepper = pepper
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        # Keyed by digest, so the cache holds no plaintext key.
        self._cache: dict[str, tuple[float, KeyIdentity | AuthFailure]] = {}
        self._last_used_written: dict[int, float] = {}
        self.hits = 0
        self.misses = 0

    def authenticate(self, session: Session, plaintext: object) -> KeyIdentity | AuthFailure:
        """The key's identity (possibly deleted or expired: see ``KeyIdentity.refusal``) or why
        it is unknown or malformed. Malformed and bad-checksum keys cost no query."""
        known = self.answer_at_once(plaintext)
        if known is not None:
            return known
        now = self.clock()
        parsed = tokens.parse(plaintext)
        assert not isinstance(parsed, AuthFailure)  # answer_at_once would have said it
        digest = tokens.digest(parsed.secret, self.pepper)
        self.misses += 1
        found = KeyService(session, self.pepper).lookup(parsed.secret)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()  # crude but bounded; a worker sees few distinct keys
        self._cache[digest] = (now, found)
        return found

    def answer_at_once(self, plaintext: object) -> KeyIdentity | AuthFailure | None:
        """What ``authenticate`` answers without the database (no session, no I/O): the cached
        answer, or why a key that does not parse is refused; None when the database must be asked."""
        # Only keys that parsed are cached: a hit needs no parse (a tenth of a small message's cost).
        if isinstance(plaintext, str) and plaintext.isascii():
            cached = self._cache.get(tokens.digest(plaintext, self.pepper))
            if cached is not None and self.clock() - cached[0] < self.ttl:
                self.hits += 1
                return cached[1]
        parsed = tokens.parse(plaintext)
        return parsed if isinstance(parsed, AuthFailure) else None

    def mark_used(self, session: Session, key_id: int) -> None:
        """Record that a key was used, at most once a minute per key in this process."""
        now = self.clock()
        if now - self._last_used_written.get(key_id, -LAST_USED_RESOLUTION) < LAST_USED_RESOLUTION:
            return
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))
        self._last_used_written[key_id] = now

    def forget(self) -> None:
        """Drop every cached answer (after a fork, or in tests)."""
        self._cache.clear()
        self._last_used_written.clear()
