"""What the edge reads from a request before any decision: the key, the body, and answers. No I/O."""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass, field

import orjson

from userpath_client.contract import KEY_PATTERN, key_display_form
from userpath_worker.keys.tokens import redact

RETRY_AFTER_SECONDS = 5  # after a 503: the broker is back within seconds, or an operator is on it


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, its JSON document and any extra headers."""

    status: int
    document: dict[str, object] | list[object]  # a list: the answers to a secret-scanning report
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def body(self) -> bytes:
        return orjson.dumps(self.document)


def success(headers: tuple[tuple[str, str], ...]) -> Answer:
    """200 ``{"success": true}``, as Segment's libraries read it, with ``headers``."""
    return Answer(200, {"success": True}, headers)


def refusal(status: int, code: str, message: str, *headers: tuple[str, str]) -> Answer:
    """A refusal as Segment's libraries read one: ``code`` and ``message`` beside ``success``."""
    return Answer(status, {"success": False, "code": code, "message": message}, headers)


def broker_unavailable() -> Answer:
    return refusal(
        503,
        "broker_unavailable",
        "the events could not be queued; nothing was kept: send them again after Retry-After",
        ("retry-after", str(RETRY_AFTER_SECONDS)),
    )


def backlog_full() -> Answer:
    return refusal(
        503,
        "backlog_full",
        "the broker holds as many of this key's events as it takes: the worker is behind; nothing was kept: "
        "send them again after Retry-After",
        ("retry-after", str(RETRY_AFTER_SECONDS)),
    )


class Refused(Exception):
    """The request is answered with ``answer`` before anything is sent on."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.document.get("code"))
        self.answer = answer


def credentials(authorization: str | None) -> str | None:
    """The key of an ``Authorization`` header: Basic with the key as user name (Segment's way; the
    password is ignored) or Bearer; None without one."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Refused(refusal(401, "malformed_key", "Authorization: Basic is not base64 of key:")) from None
        return decoded.partition(":")[0]
    raise Refused(refusal(401, "malformed_key", "Authorization: use Basic (the key as user name) or Bearer"))


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as Segment's libraries send it),
    at most ``limit`` bytes once inflated."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        inflated = body
    elif encoding in ("gzip", "deflate"):
        inflater = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)  # 47: gzip or zlib header
        try:
            inflated = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise Refused(refusal(400, "invalid_body", f"the body is not valid {encoding}")) from None
        if len(inflated) <= limit and not inflater.eof:
            raise Refused(refusal(400, "invalid_body", f"the body is truncated {encoding}"))
    else:
        raise Refused(refusal(415, "unsupported_encoding", "Content-Encoding: gzip, deflate or none"))
    if len(inflated) > limit:
        raise Refused(too_large(f"the body is over {limit} bytes"))
    return inflated


def too_large(message: str) -> Answer:
    return refusal(413, "too_large", message)


WEBHOOK_PREFIX = "/v1/webhooks/"


def shown(path: str) -> str:
    """``path`` as logs and errors may show it: a webhook URL's token in the key's display form
    (or ``[redacted]`` when it is not key-shaped: a truncated key is still most of a key), any
    other key-shaped text too."""
    if path.startswith(WEBHOOK_PREFIX) and path.count("/") >= 4:
        provider, _, token = path[len(WEBHOOK_PREFIX) :].partition("/")
        path = f"{WEBHOOK_PREFIX}{provider}/{redact(token)}"
    return KEY_PATTERN.sub(lambda found: key_display_form(found.group()), path)
