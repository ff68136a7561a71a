"""``userpath.track`` and ``userpath.webhook``: decode the delivery, call the core, return."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tasks.app import app
from tasks.base import UserPathTask
from tasks.ingestion.job import ingestor
from userpath_client.contract import TRACK_TASK, WEBHOOK_TASK
from userpath_worker import metrics
from userpath_worker.db import is_transient, utcnow
from userpath_worker.deadletter.reporting import REPORTER
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events.models import Source
from userpath_worker.events.services import IngestOutcome

logger = logging.getLogger("userpath.worker")


def _delivery(task: UserPathTask) -> Delivery:
    queue = (task.request.delivery_info or {}).get("routing_key")
    return Delivery(task=task.name, queue=queue, received_at=utcnow(), message_id=f"id:{task.request.id}")


def _run(task: UserPathTask, source: Source, handle: Callable[[], IngestOutcome]) -> str:
    """Handle one message: count it, log it, and return a one-line summary.

    Celery makes a repr of the return value for every message, for task events and Flower:
    a short text costs a tenth of what this dict's repr would on a small message.
    """
    authenticator = ingestor().authenticator
    hits, misses, started = authenticator.hits, authenticator.misses, time.perf_counter()
    try:
        outcome = handle()
    except Exception as error:
        if not is_transient(error):
            raise
        # The database, not the message, is at fault: try again later, never dead-letter.
        metrics.RETRIES.labels(task.name).inc()
        delay = task.retry_delay()
        logger.warning("database unavailable, message retried", extra={"retry_in": round(delay, 1)})
        raise task.retry(exc=error, countdown=delay, max_retries=None) from None
    summary = {
        "stored": outcome.stored,
        "duplicates": outcome.duplicates,
        "dead_lettered": outcome.dead_lettered,
        "dead_letters": outcome.reasons,
        "source": source.value,
        "org_id": outcome.org_id,
        "key": outcome.key,
        "seconds": round(time.perf_counter() - started, 6),
        "auth_hit": authenticator.hits - hits,
        "auth_miss": authenticator.misses - misses,
    }
    metrics.count_outcome(summary)
    logger.info(
        "message handled",
        extra={name: summary[name] for name in ("org_id", "key", "source", "stored", "duplicates", "dead_lettered")},
    )
    if outcome.dead_lettered:
        REPORTER.report([(outcome.reasons, outcome.key)])
    return f"stored {outcome.stored}, duplicates {outcome.duplicates}, dead-lettered {outcome.dead_lettered}"


# shared=False: these tasks belong to this app only, not to every Celery app the process makes.
@app.task(name=TRACK_TASK, bind=True, base=UserPathTask, shared=False)
def track(self: UserPathTask, *args: Any, **kwargs: Any) -> str:
    delivery = _delivery(self)
    source = Source.for_queue(delivery.queue)
    return _run(self, source, lambda: ingestor().track(args, kwargs, source, delivery))


@app.task(name=WEBHOOK_TASK, bind=True, base=UserPathTask, shared=False)
def webhook(self: UserPathTask, *args: Any, **kwargs: Any) -> str:
    delivery = _delivery(self)
    return _run(self, Source.WEBHOOK, lambda: ingestor().webhook(args, kwargs, delivery))
