"""Leaked keys: a key found in public is revoked within seconds, its owners told (PyPI's model).

GitHub's secret-scanning partner program finds our keys (prefix, high entropy, CRC-32 checksum) in
public repositories, gists and issues, and POSTs a JSON array of ``{token, type, url, source}``
signed with ECDSA P-256 over SHA-256: the ``Github-Public-Key-Signature`` header (base64 DER) under
the public key named by ``Github-Public-Key-Identifier``, one of those GitHub publishes at
USERPATH_SECRET_SCANNING_KEYS_URL (``{"public_keys": [{"key_identifier", "key", "is_current"}]}``,
fetched and cached here). ``ExposureService.github_report(headers, body)`` answers it as (status,
JSON body), so that any HTTP app can mount it: the web pages do, at POST /v1/secret-scanning/github.

For each reported token that is one of our keys: the key is revoked at once (or, with
USERPATH_EXPOSED_KEY_ACTION=expire_in_1h, expires within the hour), an audit row records where it
was found, and the organization's owners are told by e-mail (USERPATH_SMTP_URL) and through the
reminder webhook (USERPATH_REMINDER_WEBHOOK_URL, event ``api_key.exposed``). The answer labels each
token ``true_positive`` (ours) or ``false_positive``, by its SHA-256, never echoing a key.
``userpath keys report-leak`` reports one key by hand through ``report``. Framework-free: no web
framework, no Celery.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from userpath_worker import mail, web_links
from userpath_worker.audit import services as audit
from userpath_worker.db import Transaction, utcnow
from userpath_worker.keys import tokens
from userpath_worker.keys.models import ApiKey, KeyStatus
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization
from userpath_worker.webhook_post import WebhookRefused, WebhookUnanswered, post_json

logger = logging.getLogger("userpath.keys.exposure")

IDENTIFIER_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"
GITHUB = "github"  # the source of a report GitHub signed
BY_HAND = "report-leak"  # the source of a report made with the CLI
EXPIRE_IN_1H = "expire_in_1h"  # USERPATH_EXPOSED_KEY_ACTION's other choice than "revoke"
GRACE = dt.timedelta(hours=1)
KEYS_CACHE_SECONDS = 3600.0  # GitHub rotates its signing keys rarely, and says so in advance
REFETCH_AFTER_SECONDS = 60.0  # an unknown identifier refetches the keys, at most this often
FETCH_TIMEOUT_SECONDS = 10.0
NOTIFY_TIMEOUT_SECONDS = 10.0
MAX_URL = 2000  # ApiKey.exposed_url's length


GITHUB_REPORTS_PATH = "/v1/secret-scanning/github"  # where GitHub posts its reports: the web pages and the edge


class PublicKeysUnavailable(Exception):
    """GitHub's public keys could not be fetched (GitHub retries a report answered 503)."""


class PublicKeys:
    """The public keys GitHub signs reports with, by identifier: fetched from ``url`` and cached for
    KEYS_CACHE_SECONDS; an identifier not among them refetches (a new key), at most once a minute."""

    def __init__(self, url: str, cache_seconds: float = KEYS_CACHE_SECONDS) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        with self._lock:
            now = time.monotonic()
            age = None if self._fetched_at is None else now - self._fetched_at
            if (
                age is None
                or age > self.cache_seconds
                or (identifier not in self._keys and age > REFETCH_AFTER_SECONDS)
            ):
                self._keys, self._fetched_at = self._fetch(), now
            return self._keys.get(identifier)

    def _fetch(self) -> dict[str, ec.EllipticCurvePublicKey]:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json", "User-Agent": "userpath"})
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
                published = json.loads(response.read())
        except (OSError, ValueError) as error:
            raise PublicKeysUnavailable(f"GitHub's secret-scanning public keys: {type(error).__name__}") from None
        keys = {}
        for entry in published.get("public_keys", []) if isinstance(published, dict) else []:
            try:
                key = load_pem_public_key(str(entry["key"]).encode())
            except (KeyError, TypeError, ValueError, UnsupportedAlgorithm):
                continue
            if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                keys[str(entry.get("key_identifier"))] = key
        if not keys:
            raise PublicKeysUnavailable("GitHub's secret-scanning public keys: none in the answer")
        return keys


@dataclass(frozen=True, slots=True)
class Exposure:
    """What was done about one key found in public. Never holds the key itself."""

    event: str
    org: str
    key_id: int
    key_name: str
    display: str
    environment: str
    exposed_url: str | None  # where it was found, when known
    source: str  # "github", or "report-leak"
    action: str  # "revoked", "expires_in_1h", or "already_revoked"
    expires_at: str | None
    owners: list[str]
    url: str  # the key's row on its organization's API Keys page

    def text(self) -> str:
        where = f" at {self.exposed_url}" if self.exposed_url else ""
        if self.action == "expires_in_1h":
            done = f"it stops working at {self.expires_at[:16].replace('T', ' ')} UTC: roll it before then"  # type: ignore[index]
        elif self.action == "already_revoked":
            done = "it had already stopped working"
        else:
            done = "it was revoked and no longer authenticates: roll or create a key to replace it"
        return (
            f"API key '{self.key_name}' ({self.display}) of {self.org} was found in public{where}; {done}: {self.url}"
        )

    def webhook_body(self) -> dict[str, Any]:
        """Slack-compatible (``text``), as a rotation reminder, with the fields alongside."""
        return {"text": self.text(), **asdict(self)}

    def email(self, sender: str) -> EmailMessage:
        subject = f"API key '{self.key_name}' ({self.display}) of {self.org} was found in public"
        body = (
            f"{self.text()}\n\n"
            "Whoever found it may use it until it stops working. Check the organization's events for\n"
            "anything you did not send, and keep keys out of code and repositories.\n\n"
            f"You get this e-mail because you are an owner of {self.org}.\n"
        )
        return mail.plain_text(sender, self.owners, " ".join(subject.split()), body)


class ExposureService:
    """Reports of leaked keys, each in its own transaction of ``transaction`` (committed before
    anyone is told, so the key is revoked whatever happens next)."""

    def __init__(
        self, settings: Settings, transaction: Transaction, pepper: str | None, public_keys: PublicKeys | None = None
    ) -> None:
        self.settings = settings
        self.transaction = transaction
        self.pepper = pepper  # the one key digests are made with (USERPATH_KEY_PEPPER)
        self.public_keys = public_keys or PublicKeys(settings.secret_scanning_keys_url)

    def github_report(self, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """Answer one secret-scanning report: (HTTP status, JSON body). 404 without the signature
        headers (as for any address that is not ours), 400 for a bad signature or body, 503 when
        GitHub's keys cannot be fetched (GitHub retries); 200 with a label for each token."""
        identifier, signature = _header(headers, IDENTIFIER_HEADER), _header(headers, SIGNATURE_HEADER)
        if not identifier or not signature:
            return 404, {"error": "not found"}
        try:
            public_key = self.public_keys.get(identifier)
        except PublicKeysUnavailable as error:
            logger.error("secret-scanning report not verified: %s", error)
            return 503, {"error": "the signature cannot be checked now; retry later"}
        if public_key is None or not _signed(public_key, signature, body):
            logger.warning("secret-scanning report refused: a bad signature (key identifier %.80r)", identifier)
            return 400, {"error": "bad signature"}
        try:
            reports = json.loads(body)
            found = [(str(report["token"]), str(report.get("type") or ""), report.get("url")) for report in reports]
        except (ValueError, TypeError, KeyError):
            return 400, {"error": "the body must be a JSON array of {token, type, url, source}"}
        answers = []
        for token, token_type, url in found:
            exposure = self.report(token, url if isinstance(url, str) else None, GITHUB)
            answers.append(
                {
                    "token_hash": hashlib.sha256(token.encode()).hexdigest(),
                    "token_type": token_type,
                    "label": "true_positive" if exposure else "false_positive",
                }
            )
        return 200, answers

    def report(self, token: str, url: str | None, source: str, actor: str = audit.SYSTEM) -> Exposure | None:
        """Act on ``token`` found in public (at ``url``): revoke it, audit, tell the owners; what
        was done, or None when it is none of our keys."""
        exposed_url = url if url and url.startswith(("https://", "http://")) and len(url) <= MAX_URL else None
        with self.transaction() as session:
            found = KeyService(session, self.pepper).lookup(token)  # no query for what cannot be a key
            if isinstance(found, tokens.AuthFailure):
                return None
            key = session.scalars(select(ApiKey).where(ApiKey.id == found.key_id).with_for_update()).one()
            exposure = self._revoke(session, key, exposed_url, source, actor)
        logger.warning(
            "API key %d (%s) of %s found in public (%s%s): %s",
            exposure.key_id,
            exposure.display,
            exposure.org,
            source,
            f", {exposed_url}" if exposed_url else "",
            exposure.action,
        )
        self._tell_owners(exposure)
        return exposure

    def _revoke(self, session: Session, key: ApiKey, exposed_url: str | None, source: str, actor: str) -> Exposure:
        now = utcnow()
        if key.status(now) in (KeyStatus.DELETED, KeyStatus.EXPIRED):
            action = "already_revoked"
        elif self.settings.exposed_key_action == EXPIRE_IN_1H:
            action = "expires_in_1h"
            key.expires_at = min(key.expires_at, now + GRACE) if key.expires_at else now + GRACE
        else:
            action = "revoked"
            key.expires_at = key.expired_at = now  # refused by every worker within the auth cache's seconds
        key.exposed_at, key.exposed_url = now, exposed_url or key.exposed_url
        expires_at = key.expires_at.isoformat() if key.expires_at else None
        detail = {"url": exposed_url, "source": source, "action": action, "expires_at": expires_at}
        audit.write(session, actor, audit.Entry(key.org_id, "key.exposed", key.id, detail), at=now)
        organization = session.get_one(Organization, key.org_id)
        return Exposure(
            event="api_key.exposed",
            org=organization.name,
            key_id=key.id,
            key_name=key.name,
            display=key.display,
            environment=key.environment.value,
            exposed_url=exposed_url,
            source=source,
            action=action,
            expires_at=expires_at,
            owners=organizations.owner_emails(session, organization),
            url=web_links.key_url(self.settings.web_base_url, organization.id, key.id),
        )

    def _tell_owners(self, exposure: Exposure) -> None:
        """E-mail and webhook, each best effort: the key is revoked already, and a failure is logged."""
        sending = mail.Mail.from_settings(self.settings)
        if sending and exposure.owners:
            try:
                mail.send(sending.server, exposure.email(sending.sender), NOTIFY_TIMEOUT_SECONDS)
            except (mail.MailRefused, mail.MailUnanswered) as error:
                logger.error("API key %d: the owners were not e-mailed about its exposure: %s", exposure.key_id, error)
        if self.settings.reminder_webhook_url:
            try:
                post_json(self.settings.reminder_webhook_url, exposure.webhook_body(), NOTIFY_TIMEOUT_SECONDS)
            except (WebhookRefused, WebhookUnanswered) as error:
                logger.error("API key %d: the webhook was not told of its exposure: %s", exposure.key_id, error)


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value whatever its case (a plain dict's keys keep theirs)."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value.strip()
    return ""


def _signed(public_key: ec.EllipticCurvePublicKey, signature: str, body: bytes) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
