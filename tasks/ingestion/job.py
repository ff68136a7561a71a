"""The pool job: decode a batch of deliveries and store them, one transaction when all is well.

A batch the database refuses for a reason other than an outage is split in halves until each
message is stored or dead-lettered on its own, so one poison message costs about 2·log2(n)
small transactions, not the batch. Only an outage leaves the job (``DatabaseUnavailable``):
the step then keeps the batch and tries again after a backoff.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from config.settings import get_settings
from tasks.ingestion import amqp_transport, redis_transport
from tasks.ingestion.decoder import Transported, decode, refused
from userpath_client.contract import lane_of
from userpath_worker import metrics, runtime
from userpath_worker.db import is_transient
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.reporting import REPORTER
from userpath_worker.deadletter.services import Rejection
from userpath_worker.events import lanes
from userpath_worker.events.services import Incoming, Ingestor, IngestOutcome, Refused
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import configured_pepper
from userpath_worker.webhooks.crypto import secret_key
from userpath_worker.webhooks.services import SigningKeys

logger = logging.getLogger("userpath.worker")


@dataclass(frozen=True, slots=True)
class Handoff:
    """A batch as the step hands it to a pool process: on Redis the handles the messages are held
    under (the pool process reads them itself), on RabbitMQ the deliveries. Celery logs a pool
    job's arguments at DEBUG ("TaskPool: Apply ..."): this repr is all that line shows, never a
    message, whose key may be base64-encoded or escaped where no scrubber sees it."""

    transport: str
    items: Sequence[Any]

    def __repr__(self) -> str:
        return f"<{len(self.items)} {self.transport} deliveries>"

    def unwrapped(self) -> list[Transported | Refused]:
        """Each delivery as a Transported (or, when even that fails, its dead letter)."""
        if self.transport == redis_transport.NAME:
            return [redis_transport.transported(item) for item in redis_transport.held(_broker(), self.items)]
        return [amqp_transport.transported(item) for item in self.items]


@functools.cache
def _broker() -> redis.Redis:
    """One per pool process: the Redis the step holds its batches' messages in."""
    return redis.Redis.from_url(get_settings().broker_url)


@functools.cache
def ingestor() -> Ingestor:
    """One per process: its key cache is per process, its engine is made after the fork."""
    settings = get_settings()
    return Ingestor(
        runtime.session_factory(),
        KeyAuthenticator(configured_pepper(settings), settings.auth_cache_seconds),
        SigningKeys(lambda: secret_key(settings), settings.auth_cache_seconds),
        dt.timedelta(seconds=settings.webhook_tolerance_seconds),
    )


class DatabaseUnavailable(Exception):
    """The batch met a database outage: keep it and try again later."""


def ingest_batch(handoff: Handoff) -> dict[str, int]:
    """In a pool process: judge each delivery and store the batch."""
    started = time.perf_counter()
    authenticator = ingestor().authenticator
    hits, misses = authenticator.hits, authenticator.misses
    messages = [decode(item) if isinstance(item, Transported) else item for item in handoff.unwrapped()]
    outcomes = _store(messages)
    seconds = time.perf_counter() - started
    by_source: dict[str, dict[str, Any]] = {}  # counted per batch: a counter call per message cost a tenth
    debug = logger.isEnabledFor(logging.DEBUG)
    for message, outcome in zip(messages, outcomes, strict=True):
        source = message.source.value if isinstance(message, Incoming) else "unknown"
        counts = by_source.setdefault(
            source, {"source": source, "stored": 0, "duplicates": 0, "dead_letters": Counter()}
        )
        counts["stored"] += outcome.stored
        counts["duplicates"] += outcome.duplicates
        counts["dead_letters"].update(outcome.reasons)
        if debug:
            logger.debug(
                "message handled",
                extra={
                    "message_id": message.delivery.message_id,
                    "org_id": outcome.org_id,
                    "key": outcome.key,
                    "source": source,
                    "stored": outcome.stored,
                    "duplicates": outcome.duplicates,
                    "dead_lettered": outcome.dead_lettered,
                },
            )
    for counts in by_source.values():
        metrics.count_outcome(counts)
    _count_by_organization(handoff.transport, messages, outcomes)
    metrics.BATCH_WRITE_SECONDS.observe(seconds)
    for result, count in (("hit", authenticator.hits - hits), ("miss", authenticator.misses - misses)):
        metrics.AUTH_CACHE.labels(result).inc(count)
    totals = {
        "messages": len(messages),
        "stored": sum(outcome.stored for outcome in outcomes),
        "duplicates": sum(outcome.duplicates for outcome in outcomes),
        "dead_lettered": sum(outcome.dead_lettered for outcome in outcomes),
    }
    logger.info("batch handled", extra=totals | {"seconds": round(seconds, 4)})
    REPORTER.report((outcome.reasons, outcome.key) for outcome in outcomes if outcome.dead_lettered)
    return totals


# Lanes this process has recorded the owner of (on Redis): each is written once per process.
_recorded_owners: dict[str, lanes.Owner] = {}


def _count_by_organization(
    transport: str, messages: Sequence[Incoming | Refused], outcomes: Sequence[IngestOutcome]
) -> None:
    """Per organization, once a batch (a counter call a message would cost a tenth of the drain of
    single events): the events drained and the longest wait on the broker; and on Redis, the owner
    of each lane not seen before, for operators (``userpath_worker.events.lanes``)."""
    drained: Counter[int] = Counter()
    oldest: dict[int, float] = {}
    owners: dict[str, lanes.Owner] = {}
    for message, outcome in zip(messages, outcomes, strict=True):
        if outcome.org_id is None or not isinstance(message, Incoming):
            continue
        drained[outcome.org_id] += outcome.stored + outcome.duplicates
        argument = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
        sent = _seconds(argument.get("sent_at") or argument.get("received_at"))
        if sent is not None:
            oldest[outcome.org_id] = min(sent, oldest.get(outcome.org_id, sent))
        key = argument.get("api_key")
        if transport == redis_transport.NAME and isinstance(key, str) and outcome.key_id is not None:
            owner = lanes.Owner(outcome.org_id, outcome.key_id)
            lane = lane_of(key)
            if _recorded_owners.get(lane) != owner:
                owners[lane] = owner
    now = time.time()
    for org_id, count in drained.items():
        metrics.ORG_EVENTS_DRAINED.labels(str(org_id)).inc(count)
    for org_id, sent in oldest.items():
        metrics.ORG_TIME_IN_QUEUE.labels(str(org_id)).observe(max(0.0, now - sent))
    if owners:
        try:
            lanes.record_owners(_broker(), owners)
            _recorded_owners.update(owners)
        except redis.RedisError as error:  # only operators' views need it: tried again next batch
            logger.warning("could not record whose lanes these are (%s)", type(error).__name__)


def _seconds(timestamp: object) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


def record_unprocessable(handoff: Handoff, why: str) -> dict[str, int]:
    """In a pool process: the last resort for deliveries whose job failed on its own (its pool
    process died, or it ran out of time): a dead letter with the reason and no payload each."""
    letters = []
    for transported in handoff.unwrapped():
        if isinstance(transported, Refused):
            letters.append(transported)
        else:
            detail = f"the message could not be processed ({why}); only this record of it is kept"
            letters.append(refused(transported, Reason.INTERNAL_ERROR, detail, keep_body=False))
    _store(letters)
    logger.error("recorded %s message(s) that could not be processed (%s)", len(letters), why)
    return {"messages": len(letters), "stored": 0, "duplicates": 0, "dead_lettered": len(letters)}


def _store(messages: Sequence[Incoming | Refused]) -> list[IngestOutcome]:
    try:
        return ingestor().ingest(messages)
    except Exception as error:
        if is_transient(error):
            raise DatabaseUnavailable(type(error).__name__) from None
        if len(messages) > 1:
            half = len(messages) // 2
            return _store(messages[:half]) + _store(messages[half:])
        logger.exception("the database refused a message; it is dead-lettered")
        return [dead_letter(messages[0], f"the database refused the message: {type(error).__name__}")]


def dead_letter(message: Incoming | Refused, detail: str) -> IngestOutcome:
    """Record one message that could not be stored as it is: a message the database refused
    whole for replay (``detail`` says why), a dead letter as it is; and when even that is
    refused, a dead letter with its reason and no payload. Raises ``DatabaseUnavailable``."""
    if isinstance(message, Refused):
        rejection = message.rejection
        attempts = [lambda: ingestor().ingest([message])[0]]
    else:
        rejection = Rejection(Reason.INTERNAL_ERROR, detail, None)
        attempts = [lambda: ingestor().keep_for_replay(message, detail)]
    bare = Refused(Rejection(rejection.reason, rejection.detail, None), message.delivery)
    attempts.append(lambda: ingestor().ingest([bare])[0])
    for attempt in attempts:
        try:
            return attempt()
        except Exception as failure:
            if is_transient(failure):
                raise DatabaseUnavailable(type(failure).__name__) from None
            logger.exception("the database refused a dead letter")
    logger.error("not even a bare dead letter of a message could be recorded; it is dropped")
    return IngestOutcome(0, 0)
