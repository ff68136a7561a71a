"""The Celery application: ``celery -A tasks.app worker`` or ``userpath worker``."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from config.beat import beat_schedule
from config.celery import celery_config
from config.settings import get_settings
from userpath_worker import runtime, schema
from userpath_worker.errors import SettingsError, UserError

try:
    settings = get_settings()
except SettingsError as error:
    # One line and a non-zero exit, not an import traceback from inside Celery.
    raise SystemExit(f"userpath: {error}") from None

app = Celery("userpath", include=["tasks.ingest", "tasks.rotation"])
app.conf.update(celery_config(settings))
app.conf.beat_schedule = beat_schedule(settings)
app.conf.worker_consumer = "tasks.consumer:DeadLetteringConsumer"


@signals.worker_init.connect
def _prepare_schema(**_: Any) -> None:
    """Migrate the embedded SQLite database; refuse to start on a PostgreSQL schema that is behind."""
    try:
        schema.prepare(runtime.engine())
    except UserError as error:
        raise SystemExit(f"userpath: {error}") from None
    runtime.engine().dispose()  # the pool children open their own connections


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    runtime.forget_connections_after_fork()
