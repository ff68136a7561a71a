"""Encrypting signing secrets at rest: Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``)
under a key derived from USERPATH_SECRET_KEY.

USERPATH_SECRET_KEY may be any long random text: HKDF turns it into the 32 bytes Fernet needs. It is
required against PostgreSQL (every worker and CLI must share it); on the embedded SQLite default it
is generated once into ``userpath-secret-key`` beside the database file. Losing it loses every
stored signing secret: they must then be added again.
"""

from __future__ import annotations

from cryptography.fernet import InvalidToken

from config.settings import Settings
from userpath_worker.encryption import derived_fernet
from userpath_worker.errors import UserError
from userpath_worker.secret_files import configured_or_kept

SECRET_KEY_FILE = "userpath-secret-key"
_PURPOSE = b"userpath webhook signing secrets v1"


def secret_key(settings: Settings) -> str:
    """USERPATH_SECRET_KEY, or the embedded database's generated one; UserError against PostgreSQL
    when it is not set."""
    return configured_or_kept(
        settings,
        settings.secret_key,
        "USERPATH_SECRET_KEY",
        "worker, CLI and web process",
        SECRET_KEY_FILE,
        "the webhook signing secrets stored so far can no longer be read: add them again",
    )


class SecretBox:
    """Encrypts and decrypts signing secrets with one deployment's secret key."""

    def __init__(self, key: str) -> None:
        self._fernet = derived_fernet(key, _PURPOSE)

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise UserError(
                "a webhook signing secret cannot be decrypted: USERPATH_SECRET_KEY is not the key it was "
                "stored with; restore that key, or remove the secret and add it again"
            ) from None
