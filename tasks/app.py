"""The Celery application: ``celery -A tasks.app worker`` or ``userpath worker``."""

from __future__ import annotations

from celery import Celery

from config.celery import celery_config
from config.settings import get_settings
from userpath_worker.errors import SettingsError

try:
    settings = get_settings()
except SettingsError as error:
    # One line and a non-zero exit, not an import traceback from inside Celery.
    raise SystemExit(f"userpath: {error}") from None

app = Celery("userpath", include=["tasks.ingest"])
app.conf.update(celery_config(settings))
