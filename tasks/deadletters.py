"""Dead-lettering on Celery's own path (the maintenance queue, the embedded broker, unbatched
workers): messages Celery's consumer cannot hand to a task, and tasks that failed unexpectedly.

The rules are the boundary decoder's (``tasks/ingestion/decoder.py``); recording is the pool
job's (``tasks/ingestion/job.py``), in the main process here.
"""

from __future__ import annotations

import logging

from kombu.asynchronous import get_event_loop
from kombu.message import Message

from tasks.ingestion.decoder import Transported, decode, refused
from tasks.ingestion.job import DatabaseUnavailable, dead_letter
from userpath_worker import metrics
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.reporting import REPORTER
from userpath_worker.events.services import Incoming, Refused

logger = logging.getLogger("userpath.worker")

# A message whose dead letter the database could not take goes back to its queue this much
# later: held meanwhile, not slept on, so the consumer goes on with other messages.
REQUEUE_DELAY_SECONDS = 2.0


def transported(message: Message) -> Transported:
    delivery_info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    return Transported(
        message.headers, message.body, message.content_type, message.content_encoding, delivery_info.get("routing_key")
    )


def dead_letter_message(message: Message, reason: Reason, detail: str) -> None:
    """Record a whole message as a dead letter and acknowledge it; on a database outage, give
    it back to its queue a little later."""
    settle(message, refused(transported(message), reason, detail))


def failed_unexpectedly(message: Message, error: BaseException) -> None:
    """A task failed in a way its body did not foresee (a bug of ours, a time limit): the
    message is kept whole, for ``deadletter replay`` once the bug is fixed."""
    detail = f"the task failed unexpectedly: {type(error).__name__}"
    logger.error("a task failed unexpectedly; its message is dead-lettered for replay", exc_info=error)
    decoded = decode(transported(message))  # an ingestion message is kept for replay by its organization
    if not isinstance(decoded, Incoming):
        decoded = refused(transported(message), Reason.INTERNAL_ERROR, detail)
    settle(message, decoded, detail)


def settle(message: Message, letter: Incoming | Refused, detail: str = "") -> None:
    try:
        outcome = dead_letter(letter, detail)
    except DatabaseUnavailable as outage:
        logger.error("could not dead-letter a message (%s); it goes back to the queue", outage)
        hub = get_event_loop()
        if hub is None:
            message.reject(requeue=True)
        else:
            hub.call_later(REQUEUE_DELAY_SECONDS, message.reject, requeue=True)
        return
    for reason, count in outcome.reasons.items():
        metrics.DEAD_LETTERS.labels(reason, "unknown").inc(count)
    logger.info("dead-lettered a message: %s", ", ".join(outcome.reasons) or "nothing recorded")
    REPORTER.report([(outcome.reasons, outcome.key)])
    message.ack()
