"""Secrets that a deployment configures, or that the embedded default generates once into a file.

Against PostgreSQL several processes on several machines must share the secret, so it must be set;
on the embedded SQLite default the first run generates one and keeps it beside the database file
(mode 0600), so everything works with no setup and keeps working after a restart.
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


def configured_or_kept(
    settings: Settings, configured: str | None, variable: str, shared_by: str, file_name: str, lost: str
) -> str:
    """``configured`` when it is set; else the secret kept in ``file_name`` beside the embedded
    database (generated on first use). ``variable`` names the setting, ``shared_by`` the processes
    that must have the same one; ``lost`` says what a new secret would cost."""
    if configured:
        return configured
    if not settings.uses_embedded_database:
        raise UserError(
            f"{variable} is not set; set it to a long random value, the same for every {shared_by} "
            '(python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return _kept_secret(beside_database(settings, file_name), lost)


def beside_database(settings: Settings, file_name: str) -> Path:
    """Where a generated secret of an embedded database is kept: beside the database file."""
    database = make_url(settings.database_url).database
    folder = Path(database).parent if database and database != ":memory:" else Path()
    return folder / file_name


def _kept_secret(path: Path, lost: str) -> str:
    if not path.exists():
        _create(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UserError(f"{path} can be read by other users; run `chmod 600 {path}`")
    secret = path.read_text().strip()
    if not secret:
        raise UserError(f"{path} is empty; delete it and a new secret is generated ({lost})")
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
