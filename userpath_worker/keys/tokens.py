"""The API key format: ``up_<env>_`` + 32 random base-62 characters + a 6-character checksum.

Modelled on GitHub's token format: the fixed prefix lets secret scanners find leaked keys, and
the CRC-32 checksum lets the worker refuse mistyped or made-up keys without a database query.
Only a digest of the whole key is ever stored.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import string
import zlib
from dataclasses import dataclass
from typing import Any

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
PREFIX = "up_"

# What a secret scanner (and our own leak tests) look for.
KEY_PATTERN = re.compile(r"up_(?:live|test)_[0-9A-Za-z]{38}")
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


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate(environment: Environment) -> str:
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{PREFIX}{environment.value}_{random_part}{checksum(random_part)}"


def parse(candidate: object) -> ParsedKey | AuthFailure:
    """Check a candidate key's shape and checksum; no I/O."""
    if not isinstance(candidate, str) or not KEY_PATTERN.fullmatch(candidate):
        return AuthFailure.MALFORMED
    _, environment, body = candidate.split("_", 2)
    random_part, given_checksum = body[:RANDOM_LENGTH], body[RANDOM_LENGTH:]
    if not hmac.compare_digest(checksum(random_part), given_checksum):
        return AuthFailure.BAD_CHECKSUM
    return ParsedKey(environment=Environment(environment), secret=candidate)


def digest(key: str, pepper: str | None = None) -> str:
    """The only form of a key that is stored: SHA-256, or HMAC-SHA-256 when a pepper is set."""
    data = key.encode("ascii")
    if pepper:
        return hmac.new(pepper.encode(), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def display_form(key: str) -> str:
    """A recognisable, non-secret form such as ``up_live_AbCd...wxyz`` for tables and logs."""
    prefix_length = len(PREFIX) + 5  # "up_" + "live_" / "test_"
    return f"{key[: prefix_length + 4]}...{key[-4:]}"


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
            piece = text[start:]
            decoded = base64.b64decode(piece[: len(piece) - len(piece) % 4])
            if BYTES_KEY_PATTERN.search(decoded) or (depth > 1 and hides_key(decoded, depth - 1)):
                return True
    return False


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
