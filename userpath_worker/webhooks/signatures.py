"""Webhook signatures: whether a forwarded delivery was signed by its provider with one of the
organization's signing secrets. A small registry, like the normalizers', that users extend::

    @register("acme", headers=("x-acme-signature",))
    def acme(delivery: Signed) -> Refusal | None:
        signature = delivery.headers.get("x-acme-signature")
        if signature is None:
            return Refusal(unsigned=True, detail="no X-Acme-Signature header")
        expected = [hmac_sha256(key, delivery.body).hex() for key in delivery.keys]
        return None if matches_any(expected, [signature]) else Refusal(False, "X-Acme-Signature does not match")

Every check runs over the raw body exactly as forwarded and compares in constant time
(``hmac.compare_digest``). Timestamps are measured against ``received_at``, when the receiver got
the delivery, not against the worker's clock: a backlog must not turn good deliveries into failures.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: one is made per webhook, and a frozen one costs four times as much
class Signed:
    """One delivery to check: headers (names lower-cased), the raw body, the HMAC keys of every
    active secret of its provider (several while a secret is rotated), and the tolerance."""

    headers: Mapping[str, str]
    body: bytes
    keys: Sequence[bytes]
    received_at: dt.datetime
    tolerance: dt.timedelta


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a delivery does not verify: ``unsigned`` when it carries no signature at all. The detail
    says which check failed and never contains a secret or a signature."""

    unsigned: bool
    detail: str


Verifier = Callable[[Signed], Refusal | None]


@dataclass(frozen=True, slots=True)
class Scheme:
    verify: Verifier
    # The headers that carry the signature: checked, never stored with the event.
    headers: tuple[str, ...]
    # A signing secret as the provider shows it -> the HMAC key; ValueError when it is malformed.
    key: Callable[[str], bytes]
    # What identifies a delivery among what the signature covers, so that a replay, within the
    # tolerance or (for a provider that signs no time) at any time, is a duplicate: a header
    # (Standard Webhooks' webhook-id), else a field of the JSON body (Stripe's event id), else a
    # digest of the body. Never the receiver's delivery id, which anyone can change.
    delivery_id_header: str | None = None
    body_id_field: str | None = None


_registry: dict[str, Scheme] = {}
# Every registered provider's signature headers, kept as providers register: asked once a webhook,
# rebuilding it each time was 2% of a verified webhook's verdict.
_signature_headers: frozenset[str] = frozenset()


def _utf8(secret: str) -> bytes:
    return secret.encode()


def register(
    provider: str,
    *,
    headers: Sequence[str],
    key: Callable[[str], bytes] = _utf8,
    delivery_id_header: str | None = None,
    body_id_field: str | None = None,
) -> Callable[[Verifier], Verifier]:
    def decorator(verifier: Verifier) -> Verifier:
        global _signature_headers
        _registry[provider] = Scheme(
            verifier, tuple(name.lower() for name in headers), key, delivery_id_header, body_id_field
        )
        _signature_headers = frozenset(name for registered in _registry.values() for name in registered.headers)
        return verifier

    return decorator


def scheme(provider: str) -> Scheme | None:
    return _registry.get(provider)


def providers() -> list[str]:
    return sorted(_registry)


def signature_headers() -> frozenset[str]:
    """Every registered provider's signature headers (lower-cased)."""
    return _signature_headers


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    mac = _keyed(key).copy()  # the key's inner and outer pads are hashed once per key, not per delivery
    mac.update(message)
    return mac.digest()


@functools.lru_cache(maxsize=1024)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def matches_any(expected: Iterable[str | bytes], given: Iterable[str | bytes]) -> bool:
    """Whether any given signature equals any expected one, each pair compared in constant time
    (every pair is compared, so the time says nothing about which one matched)."""
    found = False
    given = [_bytes(value) if isinstance(value, str) else value for value in given]
    for candidate in expected:
        candidate = _bytes(candidate) if isinstance(candidate, str) else candidate
        for value in given:
            found |= hmac.compare_digest(candidate, value)
    return found


def _bytes(text: str) -> bytes:
    """Header text as the bytes it came as; a lone surrogate (JSON allows one) cannot raise, nor match."""
    return text.encode("utf-8", "surrogatepass")


def timestamp_refusal(text: str, header: str, delivery: Signed) -> Refusal | None:
    """Why a Unix-time ``text`` from ``header`` is unusable or outside the tolerance of
    ``received_at``, if it is."""
    try:
        # Seconds as numbers, not datetimes: a fifth of a check's time went to making them.
        skew = abs(delivery.received_at.timestamp() - int(text))
    except (ValueError, OverflowError):  # not digits, or more than a float holds
        return Refusal(False, f"{header} is not a Unix time in seconds")
    tolerance = delivery.tolerance.total_seconds()
    if skew > tolerance:
        return Refusal(False, f"{header} is {int(skew)} s from received_at; the tolerance is {int(tolerance)} s")
    return None


@register("stripe", headers=("stripe-signature",), body_id_field="id")
def stripe(delivery: Signed) -> Refusal | None:
    """``Stripe-Signature: t=...,v1=...[,v1=...]``: hex HMAC-SHA256 of ``{t}.{body}``; any ``v1`` may
    match (Stripe signs with every active secret while one is rolled)."""
    header = delivery.headers.get("stripe-signature")
    if header is None:
        return Refusal(True, "no Stripe-Signature header")
    timestamps, signatures = [], []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not signatures:
        return Refusal(False, "Stripe-Signature needs one t= and at least one v1= signature")
    refused = timestamp_refusal(timestamps[0], "Stripe-Signature's t", delivery)
    if refused:
        return refused
    signed = _bytes(timestamps[0]) + b"." + delivery.body
    if not matches_any((hmac_sha256(key, signed).hex() for key in delivery.keys), signatures):
        return Refusal(False, "no v1 signature of Stripe-Signature matches a signing secret")
    return None


@register("github", headers=("x-hub-signature-256", "x-hub-signature"))
def github(delivery: Signed) -> Refusal | None:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (the SHA-1 header is ignored)."""
    header = delivery.headers.get("x-hub-signature-256")
    if header is None:
        return Refusal(True, "no X-Hub-Signature-256 header")
    algorithm, _, signature = header.partition("=")
    if algorithm != "sha256" or not signature:
        return Refusal(False, "X-Hub-Signature-256 is not sha256=<hex>")
    if not matches_any((hmac_sha256(key, delivery.body).hex() for key in delivery.keys), [signature]):
        return Refusal(False, "X-Hub-Signature-256 matches no signing secret")
    return None


def standard_webhooks_key(secret: str) -> bytes:
    """A Standard Webhooks secret, ``whsec_`` and base64, as the key it encodes."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64")
    return key


def standard_webhooks(delivery: Signed) -> Refusal | None:
    """Standard Webhooks (Svix): ``webhook-signature: v1,<base64> [v1,<base64> ...]``, HMAC-SHA256
    of ``{webhook-id}.{webhook-timestamp}.{body}``."""
    headers = delivery.headers
    signature_header = headers.get("webhook-signature")
    if signature_header is None:
        return Refusal(True, "no webhook-signature header")
    message_id, timestamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not message_id or not timestamp:
        return Refusal(False, "webhook-signature needs the webhook-id and webhook-timestamp headers")
    refused = timestamp_refusal(timestamp, "webhook-timestamp", delivery)
    if refused:
        return refused
    signatures = [
        signature
        for version, _, signature in (item.partition(",") for item in signature_header.split())
        if version == "v1"
    ]
    if not signatures:
        return Refusal(False, "webhook-signature has no v1 signature")
    signed = _bytes(f"{message_id}.{timestamp}.") + delivery.body
    expected = (base64.b64encode(hmac_sha256(key, signed)) for key in delivery.keys)
    if not matches_any(expected, signatures):
        return Refusal(False, "no v1 signature of webhook-signature matches a signing secret")
    return None


for _provider in ("standard-webhooks", "svix"):
    register(
        _provider,
        headers=("webhook-signature",),
        key=standard_webhooks_key,
        delivery_id_header="webhook-id",
    )(standard_webhooks)


@register("slack", headers=("x-slack-signature",), body_id_field="event_id")
def slack(delivery: Signed) -> Refusal | None:
    """``X-Slack-Signature: v0=<hex HMAC-SHA256 of v0:{X-Slack-Request-Timestamp}:{body}>``."""
    header = delivery.headers.get("x-slack-signature")
    if header is None:
        return Refusal(True, "no X-Slack-Signature header")
    timestamp = delivery.headers.get("x-slack-request-timestamp")
    if not timestamp:
        return Refusal(False, "X-Slack-Signature needs the X-Slack-Request-Timestamp header")
    refused = timestamp_refusal(timestamp, "X-Slack-Request-Timestamp", delivery)
    if refused:
        return refused
    signed = _bytes(f"v0:{timestamp}:") + delivery.body
    if not matches_any((f"v0={hmac_sha256(key, signed).hex()}" for key in delivery.keys), [header]):
        return Refusal(False, "X-Slack-Signature matches no signing secret")
    return None


@register("shopify", headers=("x-shopify-hmac-sha256",))
def shopify(delivery: Signed) -> Refusal | None:
    """``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>``."""
    header = delivery.headers.get("x-shopify-hmac-sha256")
    if header is None:
        return Refusal(True, "no X-Shopify-Hmac-Sha256 header")
    if not matches_any((base64.b64encode(hmac_sha256(key, delivery.body)) for key in delivery.keys), [header]):
        return Refusal(False, "X-Shopify-Hmac-Sha256 matches no signing secret")
    return None
