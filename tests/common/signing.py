"""Webhook deliveries signed as each provider documents it, written from the providers' recipes
(not from the worker's code), for the signature tests and the real-worker test."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

# USERPATH_SECRET_KEY of the tests' workers and services.
TEST_SECRET_KEY = "test-secret-key-of-the-webhook-signing-secrets"
# USERPATH_KEY_PEPPER of every process of the tests (tests/conftest.py sets it), as in production
# against PostgreSQL; services made in a test without a pepper make and check plain digests.
TEST_KEY_PEPPER = "test-pepper-of-the-api-key-digests"
STRIPE_SECRET = "whsec_test_0123456789abcdefghijklmnopqrstuv"
GITHUB_SECRET = "github-webhook-secret-0123456789"


def _hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def unix(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def stripe_headers(secrets: list[str], body: str, signed_at: dt.datetime) -> dict[str, str]:
    """Stripe: ``t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">``, one v1 per secret."""
    t = unix(signed_at)
    v1 = ",".join(f"v1={_hex(secret, f'{t}.{body}'.encode())}" for secret in secrets)
    return {"Stripe-Signature": f"t={t},{v1}"}


def github_headers(secret: str, body: str, event: str = "push") -> dict[str, str]:
    """GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``."""
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={_hex(secret, body.encode())}"}


def standard_webhooks_headers(secret: str, message_id: str, body: str, signed_at: dt.datetime) -> dict[str, str]:
    """Standard Webhooks: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the key the
    ``whsec_`` secret's base64 encodes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    t = unix(signed_at)
    digest = hmac.new(key, f"{message_id}.{t}.{body}".encode(), hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(t),
        "webhook-signature": f"v1,{base64.b64encode(digest).decode()}",
    }


def slack_headers(secret: str, body: str, signed_at: dt.datetime) -> dict[str, str]:
    """Slack: ``v0=<hex HMAC-SHA256 of "v0:{timestamp}:{body}">``."""
    t = unix(signed_at)
    return {"X-Slack-Request-Timestamp": str(t), "X-Slack-Signature": f"v0={_hex(secret, f'v0:{t}:{body}'.encode())}"}


def shopify_headers(secret: str, body: str) -> dict[str, str]:
    """Shopify: ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>``."""
    digest = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return {"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode()}


def webhook_message(
    api_key: str,
    provider: str,
    body: str,
    headers: dict[str, str],
    received_at: dt.datetime,
    delivery_id: str = "d-1",
) -> dict[str, object]:
    """The argument of a ``userpath.webhook`` message, as a receiver forwards a delivery."""
    return {
        "api_key": api_key,
        "provider": provider,
        "delivery_id": delivery_id,
        "received_at": received_at.isoformat(),
        "headers": headers,
        "body": body,
    }
