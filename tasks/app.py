"""The Celery application: ``celery -A tasks.app worker`` or ``userpath worker``."""

from __future__ import annotations

import gc
import logging
from typing import Any

import click
from celery import Celery, signals
from click.core import ParameterSource

from config.beat import beat_schedule
from config.celery import celery_config
from config.settings import SettingsError, get_settings
from userpath_worker import logs, metrics, runtime, schema, status
from userpath_worker.errors import UserError
from userpath_worker.keys.services import configured_pepper
from userpath_worker.webhooks.crypto import secret_key

try:
    settings = get_settings()
except SettingsError as error:
    # One line and a non-zero exit, not an import traceback from inside Celery.
    raise SystemExit(f"userpath: {error}") from None

app = Celery("userpath", include=["tasks.ingest", "tasks.rotation", "tasks.maintenance", "tasks.heartbeat"])
app.conf.update(celery_config(settings))
app.conf.beat_schedule = beat_schedule(settings)
app.conf.worker_consumer = "tasks.consumer:DeadLetteringConsumer"
app.steps["consumer"].add("tasks.ingestion.step:BatchedIngestion")


logger = logging.getLogger("userpath.worker")


@signals.setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """Our formatters instead of Celery's: JSON lines, or text on a terminal, never a key.

    USERPATH_LOG_LEVEL wins when it is set; otherwise the worker's --loglevel when one was given;
    otherwise the setting's default, INFO, as ``userpath worker`` logs.
    """
    explicit = "log_level" in settings.model_fields_set
    chosen = loglevel and not _celery_default("loglevel")
    logs.configure(logging.getLevelName(loglevel) if chosen and not explicit else settings.log_level)


def _celery_default(option: str) -> bool:
    """Whether Celery's command line left ``option`` at its default.

    Celery's --loglevel defaults to WARNING in its click command and no setting changes that
    (CELERYD_LOG_LEVEL went in 4.0), so only click knows whether it was chosen. A worker started
    from code, outside a command line, chose its level.
    """
    context = click.get_current_context(silent=True)
    return context is not None and context.get_parameter_source(option) is ParameterSource.DEFAULT


@signals.worker_init.connect
def _prepare(**_: Any) -> None:
    """Migrate the embedded SQLite database; refuse to start on a PostgreSQL schema that is behind or
    without USERPATH_SECRET_KEY or USERPATH_KEY_PEPPER; serve the metrics."""
    try:
        schema.prepare(runtime.engine())
        if not settings.uses_embedded_database:
            secret_key(settings)  # it decrypts the webhook signing secrets: every worker must have it
            configured_pepper(settings)  # digests made without it could never be peppered later
    except UserError as error:
        raise SystemExit(f"userpath: {error}") from None
    runtime.engine().dispose()  # the pool children open their own connections
    if settings.metrics_port:
        try:
            metrics.serve(
                settings.metrics_port,
                lambda: status.queue_depths(settings.broker_url),
                lambda: status.organization_backlog(settings.broker_url),
            )
        except OSError as error:
            logger.error("metrics are off: port %s is not free (%s)", settings.metrics_port, error.strerror)


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    runtime.forget_connections_after_fork()
    # A batch allocates a few hundred thousand short-lived, acyclic objects (decoded events):
    # with the default thresholds the cycle collector ran hundreds of times a batch, each time
    # walking everything the process had imported. Measured: a tenth of the drain rate.
    gc.freeze()  # what exists at fork (modules, settings) is never collected: skip it
    gc.set_threshold(50_000, 20, 10)
