"""Reading a request at the edge: the key from Authorization, gzip bodies within their limit, and
paths as logs may show them."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest

from userpath_worker.edge.http import Refused, credentials, inflate, shown

KEY = "up_test_zdHBfhkO1NzfOR5Y1XqLck3kleDbHAiC3NtHTn"


def test_the_key_comes_from_basic_as_segment_sends_it_or_from_bearer() -> None:
    assert credentials("Basic " + base64.b64encode(f"{KEY}:".encode()).decode()) == KEY
    assert credentials(f"Bearer {KEY}") == KEY
    assert credentials(None) is None
    for unusable in ("Basic !!!", "Digest abc", "Basic " + base64.b64encode(b"\xff").decode()):
        with pytest.raises(Refused) as refused:
            credentials(unusable)
        assert refused.value.answer.status == 401


def test_gzip_and_deflate_bodies_are_inflated_within_the_limit() -> None:
    body = b'{"batch": []}' * 10
    assert inflate(gzip.compress(body), "gzip", 1000) == body
    assert inflate(zlib.compress(body), "deflate", 1000) == body
    assert inflate(body, None, 1000) == body
    cases = [
        (gzip.compress(b"x" * 2000), "gzip", 413),  # a small bomb is stopped at the limit
        (b"x" * 1001, None, 413),
        (b"not gzip", "gzip", 400),
        (gzip.compress(body)[:-12], "gzip", 400),
        (body, "br", 415),
    ]
    for data, encoding, status in cases:
        with pytest.raises(Refused) as refused:
            inflate(data, encoding, 1000)
        assert refused.value.answer.status == status, (encoding, data[:20])


def test_a_webhook_urls_key_is_shown_in_display_form_only() -> None:
    assert shown(f"/v1/webhooks/stripe/{KEY}") == "/v1/webhooks/stripe/up_test_zdHB...tHTn"
    assert shown(f"/v1/webhooks/stripe/{KEY[:-3]}") == "/v1/webhooks/stripe/[redacted]"  # still most of a key
    assert shown(f"/v1/track/{KEY}") == "/v1/track/up_test_zdHB...tHTn"
    assert shown("/v1/webhooks/stripe") == "/v1/webhooks/stripe"
