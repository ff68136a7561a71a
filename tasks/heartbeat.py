"""A heartbeat file for workers on the embedded broker, whose SQLAlchemy transport cannot carry
the ping that ``userpath health`` sends on Redis and RabbitMQ: the worker's main process touches
``status.heartbeat_path`` every few seconds while it is ready, and ``userpath health`` reads its age."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery import signals

from config.settings import get_settings
from userpath_worker import status

logger = logging.getLogger("userpath.worker")
_stopped = threading.Event()


def _beat(path: Path) -> None:
    while not _stopped.is_set():
        try:
            path.touch()
        except OSError as error:  # a read-only directory: health then says no worker beats
            logger.warning("cannot write the heartbeat file %s (%s)", path, error.strerror)
            return
        _stopped.wait(status.HEARTBEAT_SECONDS)


@signals.worker_ready.connect
def _start(**_: Any) -> None:
    path = status.heartbeat_path(get_settings().broker_url)
    if path is not None:
        threading.Thread(target=_beat, args=(path,), name="userpath-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    _stopped.set()
