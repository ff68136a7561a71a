"""The web secret, which signs the session cookies of ``userpath web``.

USERPATH_WEB_SECRET when it is set. On the embedded SQLite default the first run generates one
and keeps it in ``userpath-web-secret`` beside the database file (mode 0600), so the pages work
with no setup and sessions survive a restart. Against PostgreSQL it must be set: several web
processes on several machines must share it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from config.settings import Settings
from userpath_worker.errors import UserError

SECRET_FILE = "userpath-web-secret"


def web_secret(settings: Settings) -> str:
    if settings.web_secret:
        return settings.web_secret
    if not settings.uses_embedded_database:
        raise UserError(
            "USERPATH_WEB_SECRET is not set; set it to a long random value, the same for every web process "
            '(python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return _kept_secret(secret_path(settings))


def secret_path(settings: Settings) -> Path:
    """Where the generated secret of an embedded database is kept: beside the database file."""
    database = make_url(settings.database_url).database
    folder = Path(database).parent if database and database != ":memory:" else Path()
    return folder / SECRET_FILE


def _kept_secret(path: Path) -> str:
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UserError(f"{path} can be read by other users; run `chmod 600 {path}`")
    secret = path.read_text().strip()
    if not secret:
        raise UserError(f"{path} is empty; delete it and a new secret is generated (everyone signs in again)")
    return secret


def _create(path: Path) -> None:
    """Write a new secret to ``path`` unless another process does it first: the file appears whole
    (written aside, then linked into place), never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink()
