"""The API key lifecycle: create, list, roll, delete, and authenticate.

Services work inside the caller's transaction and never commit: the CLI commits once per
command, the worker once per message, and tests roll everything back.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.settings import Settings
from userpath_worker.audit import services as audit
from userpath_worker.db import utcnow
from userpath_worker.emails import normalize_email
from userpath_worker.errors import Conflict, NotFound, UserError
from userpath_worker.keys import scopes as key_scopes
from userpath_worker.keys import tokens
from userpath_worker.keys.models import ApiKey, KeyStatus
from userpath_worker.keys.scopes import Scopes
from userpath_worker.keys.tokens import AuthFailure, Environment
from userpath_worker.organizations.models import Organization
from userpath_worker.organizations.services import require_owner

OWNERS_WORK = "create, roll or delete keys"  # what only owners may do, as refusals say it
DEFAULT_ROLL_GRACE = dt.timedelta(hours=24)
MAX_ROLL_GRACE = dt.timedelta(days=7)  # Stripe's ceiling for keeping a rolled key alive


def configured_pepper(settings: Settings) -> str | None:
    """USERPATH_KEY_PEPPER, which every process that makes or checks key digests must share.

    Required against PostgreSQL: an installation that ran without one could not add one later
    without invalidating every key. The embedded default keeps plain SHA-256 digests.
    """
    if settings.key_pepper or settings.uses_embedded_database:
        return settings.key_pepper
    raise UserError(
        "USERPATH_KEY_PEPPER is not set; against PostgreSQL set it to a long random value, the same for every "
        'worker, CLI and web process (python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
    )


def check_lifetime(expires_in: dt.timedelta) -> None:
    """A new key's lifetime must be positive (the CLI checks it as it parses the option)."""
    if expires_in <= dt.timedelta(0):
        raise UserError("--expires-in must be a positive duration such as 90d")


def check_grace(grace: dt.timedelta) -> None:
    """How long a rolled key keeps working: from 0 (stops now) to MAX_ROLL_GRACE."""
    if not dt.timedelta(0) <= grace <= MAX_ROLL_GRACE:
        raise UserError("the grace period must be between 0 and 7d")


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """Who a valid key speaks for. The organization comes from here, never from a payload."""

    key_id: int
    org_id: int
    environment: Environment
    display: str
    expires_at: dt.datetime | None
    deleted: bool = False
    scopes: Scopes = None  # what the key may send (keys.scopes.permits); None: everything

    def refusal(self, now: dt.datetime) -> AuthFailure | None:
        """Why this key may not be used at ``now``, or None when it may."""
        if self.deleted:
            return AuthFailure.DELETED
        if self.expires_at is not None and self.expires_at <= now:
            return AuthFailure.EXPIRED
        return None


def identity_of(key: ApiKey) -> KeyIdentity:
    """Who ``key`` speaks for, as the authenticator caches it."""
    return KeyIdentity(
        key.id,
        key.org_id,
        key.environment,
        key.display,
        key.expires_at,
        key.deleted_at is not None,
        key_scopes.from_stored(key.scopes),
    )


class KeyService:
    def __init__(self, session: Session, pepper: str | None = None) -> None:
        self.session = session
        self.pepper = pepper

    def create(
        self,
        organization: Organization,
        name: str,
        actor: str,
        environment: Environment = Environment.LIVE,
        expires_in: dt.timedelta | None = None,
        scopes: Scopes = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which exists only in this return value. ``scopes``: what
        it may send, from ``keys.scopes.parse_scopes``; None for everything."""
        require_owner(self.session, organization, actor, OWNERS_WORK)
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise UserError("a key name must be 1 to 100 characters")
        if expires_in is not None:
            check_lifetime(expires_in)
        if scopes is not None:
            scopes = key_scopes.parse_scopes(scopes)  # canonical whoever made them: the edge compares them
        key, plaintext = self._new_key(organization.id, name, environment, actor, expires_in, scopes)
        self._audit(key, actor, "key.created", environment=environment.value, scopes=key_scopes.listed(scopes))
        return key, plaintext

    def list(self, organization: Organization) -> list[ApiKey]:
        return list(self.session.scalars(select(ApiKey).where(ApiKey.org_id == organization.id).order_by(ApiKey.id)))

    def listing(self, organization: Organization) -> list[Row[Any]]:
        """The organization's current keys (not the deleted ones) by id, as plain rows of what a list
        shows: id, name, display, environment, created_at, last_used_at, expires_at, rolled_at,
        expired_at, flag_reasons, scopes. Half the time of whole keys: the web page lists a thousand.
        ``keys.models.key_status`` gives their status."""
        columns = (
            ApiKey.id,
            ApiKey.name,
            ApiKey.display,
            ApiKey.environment,
            ApiKey.created_at,
            ApiKey.last_used_at,
            ApiKey.expires_at,
            ApiKey.rolled_at,
            ApiKey.expired_at,
            ApiKey.flag_reasons,
            ApiKey.scopes,
        )
        query = select(*columns).where(ApiKey.org_id == organization.id, ApiKey.deleted_at.is_(None))
        return list(self.session.execute(query.order_by(ApiKey.id)))

    def get(self, key_id: int) -> ApiKey:
        key = self.session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"API key {key_id} not found; `userpath keys list --org ORG` shows ids")
        return key

    def get_in(self, organization: Organization, key_id: int) -> ApiKey:
        """A key of ``organization``; NotFound for another organization's key as for an unknown id,
        so that nobody learns which ids exist elsewhere."""
        key = self.session.get(ApiKey, key_id)
        if key is None or key.org_id != organization.id:
            raise NotFound(f"API key {key_id} not found in '{organization.name}'")
        return key

    def roll(self, key_id: int, actor: str, grace: dt.timedelta = DEFAULT_ROLL_GRACE) -> tuple[ApiKey, str]:
        """Replace a key: same name, environment and scopes; the old one works until now + grace."""
        check_grace(grace)
        old = self._get_for_change(key_id, actor)
        if old.status() is KeyStatus.EXPIRING and old.replaced_by_id is not None:
            raise Conflict(
                f"API key {key_id} is expiring and cannot be rolled: key {old.replaced_by_id} already replaced it; "
                f"roll key {old.replaced_by_id} instead"
            )
        if old.status() is not KeyStatus.ACTIVE:
            raise Conflict(f"API key {key_id} is {old.status()} and cannot be rolled")
        now = utcnow()
        lifetime = old.expires_at - old.created_at if old.expires_at else None
        old.rolled_at = now
        old.flagged_at = old.flag_reasons = None  # rotated: the replacement starts unflagged
        old.expires_at = min(now + grace, old.expires_at) if old.expires_at else now + grace
        self.session.flush()  # frees the name before the replacement takes it
        scopes = key_scopes.from_stored(old.scopes)
        new, plaintext = self._new_key(old.org_id, old.name, old.environment, actor, lifetime, scopes)
        old.replaced_by_id = new.id
        self._audit(old, actor, "key.rolled", replaced_by=new.id, expires_at=old.expires_at.isoformat())
        return new, plaintext

    def delete(self, key_id: int, actor: str) -> ApiKey:
        key = self._get_for_change(key_id, actor)
        if key.deleted_at is not None:
            raise Conflict(f"API key {key_id} is already deleted")
        key.deleted_at = utcnow()
        key.flagged_at = key.flag_reasons = None
        self._audit(key, actor, "key.deleted")
        self.session.flush()
        return key

    def lookup(self, plaintext: object) -> KeyIdentity | AuthFailure:
        """Parse a candidate key and find it; no query for malformed or bad-checksum keys.

        A deleted or expired key is still returned, so that a cache can keep the answer and
        callers know whose key was refused; ``authenticate`` is the complete check.
        """
        parsed = tokens.parse(plaintext)
        if isinstance(parsed, AuthFailure):
            return parsed
        wanted = tokens.digest(parsed.secret, self.pepper)
        key = self.session.scalar(select(ApiKey).where(ApiKey.digest == wanted))
        if key is None or not hmac.compare_digest(key.digest, wanted):
            return AuthFailure.UNKNOWN
        return identity_of(key)

    def authenticate(self, plaintext: object) -> KeyIdentity | AuthFailure:
        """The key's identity, or why it is refused."""
        found = self.lookup(plaintext)
        if isinstance(found, AuthFailure):
            return found
        return found.refusal(utcnow()) or found

    def _get_for_change(self, key_id: int, actor: str) -> ApiKey:
        key = self.get(key_id)
        organization = self.session.get_one(Organization, key.org_id)
        require_owner(self.session, organization, actor, OWNERS_WORK)
        return key

    def _new_key(
        self,
        org_id: int,
        name: str,
        environment: Environment,
        actor: str,
        expires_in: dt.timedelta | None,
        scopes: Scopes,
    ) -> tuple[ApiKey, str]:
        plaintext = tokens.generate(environment)
        now = utcnow()
        key = ApiKey(
            org_id=org_id,
            name=name,
            environment=environment,
            digest=tokens.digest(plaintext, self.pepper),
            display=tokens.display_form(plaintext),
            created_by=normalize_email(actor),
            created_at=now,
            expires_at=now + expires_in if expires_in else None,
            scopes=key_scopes.to_stored(scopes),
        )
        try:
            with self.session.begin_nested():
                self.session.add(key)
                self.session.flush()
        except IntegrityError:
            raise Conflict(
                f"a key named '{name}' already exists in this organization; "
                "pick another name, or roll or delete that key"
            ) from None
        return key, plaintext

    def _audit(self, key: ApiKey, actor: str, action: str, **detail: object) -> None:
        audit.write(self.session, actor, audit.Entry(key.org_id, action, key.id, detail))
