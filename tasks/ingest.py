"""``userpath.track`` and ``userpath.webhook``: decode the delivery, call the core, return."""

from __future__ import annotations

import functools
from typing import Any

from config.settings import get_settings
from tasks.app import app
from tasks.base import UserPathTask
from userpath_worker import runtime
from userpath_worker.db import is_transient, utcnow
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events.models import Source
from userpath_worker.events.schemas import TRACK_TASK, WEBHOOK_TASK
from userpath_worker.events.services import Ingestor
from userpath_worker.keys.auth import KeyAuthenticator


@functools.cache
def ingestor() -> Ingestor:
    """One per process: its key cache is per process, its engine is made after the fork."""
    settings = get_settings()
    return Ingestor(runtime.session_factory(), KeyAuthenticator(settings.key_pepper, settings.auth_cache_seconds))


def _delivery(task: UserPathTask) -> Delivery:
    queue = (task.request.delivery_info or {}).get("routing_key")
    return Delivery(task=task.name, queue=queue, received_at=utcnow())


def _run(task: UserPathTask, handle: Any) -> dict[str, int]:
    try:
        outcome = handle(_delivery(task))
    except Exception as error:
        if not is_transient(error):
            raise
        # The database, not the message, is at fault: try again later, never dead-letter.
        raise task.retry(exc=error, countdown=task.retry_delay(), max_retries=None) from None
    return {"stored": outcome.stored, "dead_lettered": outcome.dead_lettered}


@app.task(name=TRACK_TASK, bind=True, base=UserPathTask)
def track(self: UserPathTask, *args: Any, **kwargs: Any) -> dict[str, int]:
    def handle(delivery: Delivery) -> Any:
        return ingestor().track(args, kwargs, Source.for_queue(delivery.queue), delivery)

    return _run(self, handle)


@app.task(name=WEBHOOK_TASK, bind=True, base=UserPathTask)
def webhook(self: UserPathTask, *args: Any, **kwargs: Any) -> dict[str, int]:
    return _run(self, lambda delivery: ingestor().webhook(args, kwargs, delivery))
