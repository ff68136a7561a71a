"""The web secret, which signs the session cookies of ``userpath web``.

USERPATH_WEB_SECRET when it is set. On the embedded SQLite default the first run generates one
and keeps it in ``userpath-web-secret`` beside the database file (mode 0600), so the pages work
with no setup and sessions survive a restart. Against PostgreSQL it must be set: several web
processes on several machines must share it.
"""

from __future__ import annotations

from config.settings import Settings
from userpath_worker.secret_files import configured_or_kept

SECRET_FILE = "userpath-web-secret"


def web_secret(settings: Settings) -> str:
    return configured_or_kept(
        settings, settings.web_secret, "USERPATH_WEB_SECRET", "web process", SECRET_FILE, "everyone signs in again"
    )
