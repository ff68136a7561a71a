"""API keys on the worker's side: making them, checking them, and keeping them out of sight.

The format itself is the wire contract's (``userpath_client.contract``). Only a digest of the
whole key is ever stored.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from userpath_client.contract import (
    KEY_ALPHABET,
    KEY_PATTERN,
    KEY_PREFIX,
    KEY_RANDOM_LENGTH,
    key_checksum,
    key_problem,
)
from userpath_client.contract import key_display_form as display_form

BYTES_KEY_PATTERN = re.compile(KEY_PATTERN.pattern.encode())


class Environment(enum.StrEnum):
    LIVE = "live"
    TEST = "test"


class AuthFailure(enum.StrEnum):
    """Why a key was refused. The first two are decided without touching the database."""

    MALFORMED = "malformed"
    BAD_CHECKSUM = "bad_checksum"
    UNKNOWN = "unknown"
    DELETED = "deleted"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    environment: Environment
    secret: str


def generate(environment: Environment) -> str:
    random_part = "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_RANDOM_LENGTH))
    return f"{KEY_PREFIX}{environment.value}_{random_part}{key_checksum(random_part)}"


def parse(candidate: object) -> ParsedKey | AuthFailure:
    """Check a candidate key's shape and checksum; no I/O."""
    problem = key_problem(candidate)
    if problem is not None:
        return AuthFailure(problem)
    assert isinstance(candidate, str)  # key_problem said so
    return ParsedKey(environment=Environment(candidate.split("_", 2)[1]), secret=candidate)


def digest(key: str, pepper: str | None = None) -> str:
    """The only form of a key that is stored: SHA-256, or HMAC-SHA-256 when a pepper is set."""
    data = key.encode("ascii")
    if pepper:
        return hmac.digest(pepper.encode(), data, "sha256").hex()  # one C call: a third of hmac.new's
    return hashlib.sha256(data).hexdigest()


def redact(candidate: object) -> str:
    """What to write in place of a possibly-secret value in a log or a dead letter."""
    if isinstance(candidate, str) and KEY_PATTERN.fullmatch(candidate):
        return display_form(candidate)
    return "[redacted]"


def scrub_text(text: str) -> str:
    """``text`` with every key in it replaced by its display form."""
    return KEY_PATTERN.sub(lambda match: display_form(match.group()), text)


# Base64 text, line-wrapped or not, long enough to hold a key (46 characters encode to 64).
_BASE64_RUN = re.compile(rb"(?:[A-Za-z0-9+/_-][\r\n]*){60,}={0,2}")


def hides_key(data: str | bytes, depth: int = 2) -> bool:
    """Whether ``data`` holds a key encoded in base64 (or base64 within base64), where
    ``scrub_text`` cannot see it."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    for run in _BASE64_RUN.finditer(raw):
        text = re.sub(rb"[\r\n]", b"", run.group()).replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
        for start in range(4):  # the run may begin mid-way through a base64 quantum
            decoded = base64.b64decode(_padded(text[start:]))
            if BYTES_KEY_PATTERN.search(decoded) or (depth > 1 and hides_key(decoded, depth - 1)):
                return True
    return False


def _padded(run: bytes) -> bytes:
    """A base64 run whose padding is missing or was stripped, ready to decode to its last byte: a
    key at the very end of a body must not be cut off by rounding the run down."""
    remainder = len(run) % 4
    return run[:-1] if remainder == 1 else run + b"=" * (-len(run) % 4)


def scrub(value: Any) -> Any:
    """A JSON-like value with every key inside any string replaced by its display form.

    Customers do paste keys into event properties and webhook bodies; none may be stored.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value
