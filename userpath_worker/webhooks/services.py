"""Organizations' webhook signing secrets: add, list and remove them (owners only, audit-logged),
and the worker's per-process view of them.

Services work inside the caller's transaction and never commit. A secret is stored only encrypted
(``webhooks.crypto``) with a display form; it is in no log line, audit row, listing or dead letter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from userpath_worker.audit import services as audit
from userpath_worker.db import utcnow
from userpath_worker.emails import normalize_email
from userpath_worker.errors import Conflict, NotFound, UserError
from userpath_worker.organizations.models import Organization
from userpath_worker.organizations.services import require_owner
from userpath_worker.webhooks import signatures
from userpath_worker.webhooks.crypto import SecretBox
from userpath_worker.webhooks.models import WebhookSecret

logger = logging.getLogger("userpath.worker")

MAX_SECRET_LENGTH = 1000
OWNERS_WORK = "add or remove webhook signing secrets"  # what only owners may do, as the refusal says it


def display_form(secret: str) -> str:
    """What listings show of a secret: its well-known prefix and last four characters, or less of
    a short one."""
    prefix = "whsec_" if secret.startswith("whsec_") else ""
    rest = secret.removeprefix(prefix)
    return f"{prefix}...{rest[-4:]}" if len(rest) >= 16 else f"{prefix}..."


def add_secret(
    session: Session, box: SecretBox, organization: Organization, provider: str, secret: str, actor: str
) -> WebhookSecret:
    """Store ``secret`` encrypted; from now on the organization's ``provider`` webhooks must verify."""
    require_owner(session, organization, actor, OWNERS_WORK)
    scheme = signatures.scheme(provider)
    if scheme is None:
        raise UserError(
            f"no signature check is registered for provider '{provider}'; "
            f"known providers: {', '.join(signatures.providers())}"
        )
    secret = secret.strip()
    if not 1 <= len(secret) <= MAX_SECRET_LENGTH:
        raise UserError(f"a signing secret must be 1 to {MAX_SECRET_LENGTH} characters; paste it on standard input")
    try:
        scheme.key(secret)
    except ValueError as error:
        raise UserError(f"that is not a {provider} signing secret: {error}") from None
    for stored in list_secrets(session, organization, provider):
        if box.decrypt(stored.ciphertext) == secret:
            raise Conflict(f"that secret is already stored for {provider} (id {stored.id})")
    added = WebhookSecret(
        org_id=organization.id,
        provider=provider,
        ciphertext=box.encrypt(secret),
        display=display_form(secret),
        created_at=utcnow(),
        created_by=normalize_email(actor),
    )
    session.add(added)
    session.flush()
    _audit(session, added, actor, "webhook_secret.added")
    return added


def list_secrets(session: Session, organization: Organization, provider: str | None = None) -> list[WebhookSecret]:
    query = select(WebhookSecret).where(WebhookSecret.org_id == organization.id)
    if provider is not None:
        query = query.where(WebhookSecret.provider == provider)
    return list(session.scalars(query.order_by(WebhookSecret.provider, WebhookSecret.id)))


def get_secret(session: Session, secret_id: int, organization: Organization | None = None) -> WebhookSecret:
    """A secret by id (of ``organization`` when given: another one's is NotFound too)."""
    found = session.get(WebhookSecret, secret_id)
    if found is None or (organization is not None and found.org_id != organization.id):
        raise NotFound(f"webhook secret {secret_id} not found; `userpath webhooks secrets list --org ORG` shows ids")
    return found


def remove_secret(
    session: Session, secret_id: int, actor: str, organization: Organization | None = None
) -> WebhookSecret:
    """Delete a secret: deliveries signed only with it stop verifying at once (within the workers'
    cache time)."""
    removed = get_secret(session, secret_id, organization)
    require_owner(session, session.get_one(Organization, removed.org_id), actor, OWNERS_WORK)
    session.delete(removed)
    session.flush()
    _audit(session, removed, actor, "webhook_secret.removed")
    return removed


def _audit(session: Session, secret: WebhookSecret, actor: str, action: str) -> None:
    detail = {"secret_id": secret.id, "provider": secret.provider, "display": secret.display}
    audit.write(session, actor, audit.Entry(secret.org_id, action, detail=detail))


# Provider -> the HMAC keys of its active secrets.
SigningKeysOfOrg = Mapping[str, tuple[bytes, ...]]


class SigningKeys:
    """The HMAC keys of each organization's secrets, decrypted once and kept for ``ttl`` seconds
    per process (as keys are): one query per organization and period, not one per webhook. A secret
    removed is no longer accepted after at most ``ttl``. The box is made only when some
    organization has a secret, from ``key_source`` (``crypto.secret_key``)."""

    def __init__(self, key_source: Callable[[], str], ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._key_source = key_source
        self._box: SecretBox | None = None
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[int, tuple[float, SigningKeysOfOrg]] = {}

    def of(self, session: Session, org_id: int) -> SigningKeysOfOrg:
        now = self._clock()
        cached = self._cache.get(org_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        rows = session.execute(
            select(WebhookSecret.id, WebhookSecret.provider, WebhookSecret.ciphertext).where(
                WebhookSecret.org_id == org_id
            )
        ).all()
        keys: dict[str, list[bytes]] = {}
        for secret_id, provider, ciphertext in rows:
            usable = keys.setdefault(provider, [])
            scheme = signatures.scheme(provider)
            if scheme is None:  # registered when it was added, not in this process: nothing verifies
                continue
            try:
                usable.append(scheme.key(self.box.decrypt(ciphertext)))
            except (UserError, ValueError) as error:
                # The provider's webhooks are refused (bad_signature), not stored unverified.
                logger.error("webhook secret %s of organization %s is not usable: %s", secret_id, org_id, error)
        found = {provider: tuple(values) for provider, values in keys.items()}
        self._cache[org_id] = (now, found)
        return found

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox(self._key_source())
        return self._box
