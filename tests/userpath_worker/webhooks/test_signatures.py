"""The signature checks, against the providers' published examples where they exist (Standard
Webhooks, GitHub) and deliveries built with each provider's documented recipe otherwise."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pytest

from tests.common.signing import (
    GITHUB_SECRET,
    STRIPE_SECRET,
    github_headers,
    shopify_headers,
    slack_headers,
    standard_webhooks_headers,
    stripe_headers,
)
from userpath_worker.webhooks import signatures
from userpath_worker.webhooks.signatures import Refusal, Signed

RECEIVED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
TOLERANCE = dt.timedelta(seconds=300)
BODY = '{"id":"evt_1","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}'
SVIX_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SHOPIFY_SECRET = "shpss_0123456789abcdef0123456789abcdef"


def check(
    provider: str,
    headers: Mapping[str, str],
    body: str | bytes,
    secrets: list[str],
    received_at: dt.datetime = RECEIVED,
) -> Refusal | None:
    scheme = signatures.scheme(provider)
    assert scheme is not None
    raw = body.encode() if isinstance(body, str) else body
    lowered = {name.lower(): value for name, value in headers.items()}
    keys = [scheme.key(secret) for secret in secrets]
    return scheme.verify(Signed(lowered, raw, keys, received_at, TOLERANCE))


# --- published examples ---------------------------------------------------------------------


def test_the_standard_webhooks_specifications_example_verifies() -> None:
    """The example of the Standard Webhooks specification (and of Svix's libraries)."""
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    at = dt.datetime.fromtimestamp(1614265330, dt.UTC)
    for provider in ("standard-webhooks", "svix"):
        assert check(provider, headers, '{"test": 2432232314}', [SVIX_SECRET], at) is None
    assert check("svix", headers, '{"test": 2432232315}', [SVIX_SECRET], at) == Refusal(
        False, "no v1 signature of webhook-signature matches a signing secret"
    )


def test_githubs_documented_example_verifies() -> None:
    """GitHub's "Validating webhook deliveries": secret "It's a Secret to Everybody", body
    "Hello, World!"."""
    header = {"X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}
    assert check("github", header, "Hello, World!", ["It's a Secret to Everybody"]) is None
    assert check("github", header, "Hello, World?", ["It's a Secret to Everybody"]) is not None


# --- each provider by its recipe: genuine, one byte changed, wrong secret, unsigned ------------

SIGNED = {
    "stripe": (STRIPE_SECRET, lambda secret, body: stripe_headers([secret], body, RECEIVED)),
    "github": (GITHUB_SECRET, lambda secret, body: github_headers(secret, body)),
    "standard-webhooks": (
        SVIX_SECRET,
        lambda secret, body: standard_webhooks_headers(secret, "msg_1", body, RECEIVED),
    ),
    "slack": (SLACK_SECRET, lambda secret, body: slack_headers(secret, body, RECEIVED)),
    "shopify": (SHOPIFY_SECRET, lambda secret, body: shopify_headers(secret, body)),
}
UNSIGNED_DETAIL = {
    "stripe": "no Stripe-Signature header",
    "github": "no X-Hub-Signature-256 header",
    "standard-webhooks": "no webhook-signature header",
    "slack": "no X-Slack-Signature header",
    "shopify": "no X-Shopify-Hmac-Sha256 header",
}


@pytest.mark.parametrize("provider", sorted(SIGNED))
def test_a_genuine_delivery_verifies_and_a_body_changed_by_one_byte_does_not(provider: str) -> None:
    secret, sign = SIGNED[provider]
    headers = sign(secret, BODY)
    assert check(provider, headers, BODY, [secret]) is None
    changed = BODY.replace("cus_1", "cus_2")
    refused = check(provider, headers, changed, [secret])
    assert refused is not None and not refused.unsigned
    assert check(provider, headers, BODY + " ", [secret]) is not None  # one byte more
    assert secret not in refused.detail


@pytest.mark.parametrize("provider", sorted(SIGNED))
def test_a_delivery_signed_with_another_secret_is_refused(provider: str) -> None:
    secret, sign = SIGNED[provider]
    other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB" if secret.startswith("whsec_") else secret + "x"
    refused = check(provider, sign(other, BODY), BODY, [secret])
    assert refused is not None and not refused.unsigned


@pytest.mark.parametrize("provider", sorted(SIGNED))
def test_a_delivery_without_its_signature_header_is_unsigned(provider: str) -> None:
    secret, _ = SIGNED[provider]
    assert check(provider, {"Content-Type": "application/json"}, BODY, [secret]) == Refusal(
        True, UNSIGNED_DETAIL[provider]
    )


@pytest.mark.parametrize("provider", sorted(SIGNED))
def test_any_of_several_active_secrets_verifies(provider: str) -> None:
    """While a secret is rotated both are active: a delivery signed with either verifies."""
    secret, sign = SIGNED[provider]
    old = "whsec_" + "T0xET0xET0xET0xET0xET0xET0xET0xE" if secret.startswith("whsec_") else secret + "-old"
    assert check(provider, sign(old, BODY), BODY, [secret, old]) is None
    assert check(provider, sign(secret, BODY), BODY, [old, secret]) is None


def test_stripe_accepts_any_of_several_v1_signatures() -> None:
    """Stripe signs with every active secret of an endpoint while one is rolled: one v1 each."""
    headers = stripe_headers(["whsec_rolled_away_0000000000000000", STRIPE_SECRET], BODY, RECEIVED)
    assert headers["Stripe-Signature"].count("v1=") == 2
    assert check("stripe", headers, BODY, [STRIPE_SECRET]) is None


def test_standard_webhooks_accepts_any_of_several_space_separated_signatures() -> None:
    genuine = standard_webhooks_headers(SVIX_SECRET, "msg_1", BODY, RECEIVED)
    genuine["webhook-signature"] = f"v1,bm90IGl0 v2,aWdub3JlZA== {genuine['webhook-signature']}"
    assert check("standard-webhooks", genuine, BODY, [SVIX_SECRET]) is None


def test_a_standard_webhooks_signature_covers_the_message_id() -> None:
    headers = standard_webhooks_headers(SVIX_SECRET, "msg_1", BODY, RECEIVED) | {"webhook-id": "msg_2"}
    assert check("standard-webhooks", headers, BODY, [SVIX_SECRET]) is not None


# --- timestamps: measured against received_at, with the tolerance's boundaries ----------------

TIMED = {
    "stripe": (STRIPE_SECRET, lambda at: stripe_headers([STRIPE_SECRET], BODY, at), "Stripe-Signature's t"),
    "standard-webhooks": (
        SVIX_SECRET,
        lambda at: standard_webhooks_headers(SVIX_SECRET, "msg_1", BODY, at),
        "webhook-timestamp",
    ),
    "slack": (SLACK_SECRET, lambda at: slack_headers(SLACK_SECRET, BODY, at), "X-Slack-Request-Timestamp"),
}


@pytest.mark.parametrize("provider", sorted(TIMED))
@pytest.mark.parametrize(("offset", "verifies"), [(-300, True), (300, True), (-301, False), (301, False), (0, True)])
def test_the_timestamp_must_be_within_the_tolerance_of_received_at(provider: str, offset: int, verifies: bool) -> None:
    secret, sign, header = TIMED[provider]
    refused = check(provider, sign(RECEIVED + dt.timedelta(seconds=offset)), BODY, [secret])
    if verifies:
        assert refused is None
    else:
        assert refused == Refusal(False, f"{header} is 301 s from received_at; the tolerance is 300 s")


@pytest.mark.parametrize("provider", sorted(TIMED))
def test_an_old_delivery_replayed_with_its_genuine_signature_is_refused(provider: str) -> None:
    """Someone who captured a delivery sends it again a day later: the signature is genuine, the
    time is not."""
    secret, sign, _ = TIMED[provider]
    captured = sign(RECEIVED)
    assert check(provider, captured, BODY, [secret]) is None
    refused = check(provider, captured, BODY, [secret], received_at=RECEIVED + dt.timedelta(days=1))
    assert refused is not None and "from received_at" in refused.detail


@pytest.mark.parametrize(
    ("provider", "headers", "detail"),
    [
        ("stripe", {"Stripe-Signature": "v1=abc"}, "Stripe-Signature needs one t= and at least one v1= signature"),
        ("stripe", {"Stripe-Signature": "t=1,t=2,v1=abc"}, "Stripe-Signature needs one t= and at least one v1="),
        ("stripe", {"Stripe-Signature": "t=soon,v1=abc"}, "Stripe-Signature's t is not a Unix time in seconds"),
        ("stripe", {"Stripe-Signature": f"t=1{'0' * 400},v1=abc"}, "Stripe-Signature's t is not a Unix time"),
        ("slack", {"X-Slack-Signature": "v0=a", "X-Slack-Request-Timestamp": "9" * 5000}, "is not a Unix time"),
        ("github", {"X-Hub-Signature-256": "sha1=abc"}, "X-Hub-Signature-256 is not sha256=<hex>"),
        ("standard-webhooks", {"webhook-signature": "v1,abc"}, "needs the webhook-id and webhook-timestamp"),
        ("slack", {"X-Slack-Signature": "v0=abc"}, "needs the X-Slack-Request-Timestamp header"),
    ],
)
def test_a_malformed_signature_header_is_a_bad_signature_saying_what_is_wrong(
    provider: str, headers: dict[str, str], detail: str
) -> None:
    secret, _ = SIGNED[provider]
    refused = check(provider, headers, BODY, [secret])
    assert refused is not None and not refused.unsigned and detail in refused.detail


def test_a_standard_webhooks_secret_must_be_base64() -> None:
    scheme = signatures.scheme("standard-webhooks")
    assert scheme is not None and scheme.key(SVIX_SECRET) == scheme.key(SVIX_SECRET.removeprefix("whsec_"))
    with pytest.raises(ValueError, match="whsec_ followed by base64"):
        scheme.key("whsec_not base64!")


def test_users_register_a_provider_beside_the_built_in_ones() -> None:
    @signatures.register("acme-test", headers=("X-Acme-Signature",))
    def acme(delivery: Signed) -> Refusal | None:
        signature = delivery.headers.get("x-acme-signature")
        if signature is None:
            return Refusal(True, "no X-Acme-Signature header")
        expected = [signatures.hmac_sha256(key, delivery.body).hex() for key in delivery.keys]
        return None if signatures.matches_any(expected, [signature]) else Refusal(False, "no match")

    try:
        good = {"X-Acme-Signature": signatures.hmac_sha256(b"acme", BODY.encode()).hex()}
        assert check("acme-test", good, BODY, ["acme"]) is None
        assert check("acme-test", good, BODY, ["other"]) == Refusal(False, "no match")
        assert "x-acme-signature" in signatures.signature_headers()
    finally:
        signatures._registry.pop("acme-test")


@pytest.mark.parametrize("provider", sorted(SIGNED))
def test_a_lone_surrogate_in_any_header_is_refused_never_raised(provider: str) -> None:
    """JSON lets a header carry a lone surrogate: the check refuses it like any other bad value."""
    secret, sign = SIGNED[provider]
    for name, value in sign(secret, BODY).items():
        headers = sign(secret, BODY) | {name: value[:3] + "\ud800" + value[3:]}
        refused = check(provider, headers, BODY, [secret])
        assert refused is not None or name.lower() in ("x-github-event", "x-shopify-topic")
