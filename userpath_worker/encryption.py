"""Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) under a key derived from any text.

HKDF turns a long random text (USERPATH_SECRET_KEY, a one-time token) into the 32 bytes Fernet
needs; ``purpose`` keeps the keys derived from one text for different uses apart.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derived_fernet(key: str, purpose: bytes) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))
